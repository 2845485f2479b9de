// Command coredns is CoreDNS with only the plugins the local cluster uses: it serves cluster.local from
// the API server and nothing else. Without the forward plugin it cannot ask an upstream server, so no
// query a pod makes leaves the machine.
// Built by hack/build-control-plane; used for the local-cluster test tier only.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
