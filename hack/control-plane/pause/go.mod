module whm-ha/hack/control-plane/pause

go 1.26
