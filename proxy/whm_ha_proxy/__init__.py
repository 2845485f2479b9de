"""The whm-ha proxy: an HTTP load balancer over the healthy nodes of a WHMCluster."""
