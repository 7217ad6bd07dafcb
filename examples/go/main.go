// Command greeter is the Go side of Registrar's gRPC naming: a client that balances over the
// backends of a target round-robin, and a server that registers itself with etcd's
// endpoints.Manager and drains on SIGTERM. Both speak to the same etcd as the Registrar
// operator and the Rust crate registrar-resolver.
//
//	go run . client -etcd http://127.0.0.1:2379 -target registrar/demo/greeter -n 10
//	go run . server -etcd http://127.0.0.1:2379 -target registrar/demo/greeter -addr 127.0.0.2:50051 -name b1
//
// The target is "registrar/<namespace>/<ServiceRegistration name>", dialed as
// "etcd:///registrar/<namespace>/<name>" with NO trailing slash: etcd's resolver watches
// "<target>/", so "etcd:///registrar/demo/greeter/" watches "registrar/demo/greeter//", finds
// no endpoint, logs nothing, and every RPC waits until its deadline (DeadlineExceeded).
//
// The Greeter messages are encoded by hand (greeter.go) so that the example needs no generated
// code; in your project, protoc-gen-go and protoc-gen-go-grpc generate them.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "client" && os.Args[1] != "server") {
		fail(errors.New("usage: greeter client|server [flags] (-h for the flags)"))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	etcd := fs.String("etcd", "http://127.0.0.1:2379", "etcd endpoints, comma-separated")
	user := fs.String("user", "", "etcd user (with -password)")
	password := fs.String("password", "", "etcd password")
	cacert := fs.String("cacert", "", "CA of etcd's certificates (PEM), for https endpoints")
	target := fs.String("target", "registrar/demo/greeter", "naming target, without a trailing slash")
	// client
	authority := fs.String("authority", "greeter", "the :authority of the calls (client)")
	n := fs.Int("n", 10, "calls to make (client)")
	every := fs.Duration("every", 200*time.Millisecond, "pause between calls (client)")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call (client)")
	// server
	addr := fs.String("addr", "127.0.0.1:50051", "listen address; port 0 picks one (server)")
	name := fs.String("name", "go", "backend name in the replies (server)")
	ttl := fs.Int64("ttl", 10, "lease TTL in seconds (server)")
	drain := fs.Duration("drain", 5*time.Second, "drain delay after SIGTERM (server)")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail(err)
	}

	cfg := clientv3.Config{
		Endpoints:   strings.Split(*etcd, ","),
		DialTimeout: 5 * time.Second,
		Username:    *user,
		Password:    *password,
		Logger:      zap.NewNop(),
	}
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fail(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail(fmt.Errorf("no certificate in %s", *cacert))
		}
		cfg.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		fail(err)
	}
	defer cli.Close()

	if os.Args[1] == "client" {
		err = runClient(cli, *target, *authority, *n, *every, *timeout)
	} else {
		err = runServer(cli, *target, *addr, *name, *ttl, *drain)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "greeter:", err)
	os.Exit(1)
}
