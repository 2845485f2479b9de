// Command etcd is a thin wrapper around go.etcd.io/etcd/server/v3/etcdmain,
// like etcd's own main.go (go install go.etcd.io/etcd/v3@... is not possible
// because etcd's root module uses replace directives).
// Built by hack/build-control-plane; used for local/integration testing only.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
