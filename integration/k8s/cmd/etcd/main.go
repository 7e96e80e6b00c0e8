// Command etcd is upstream etcd (go.etcd.io/etcd/server/v3/etcdmain) built
// from the version pinned in this module, for the integration tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
