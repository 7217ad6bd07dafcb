package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// runServer serves the Greeter on addr, registers it under target with a lease kept alive, and
// on SIGTERM/SIGINT drains: NOT_SERVING, deregistration, the drain delay, graceful stop.
func runServer(cli *clientv3.Client, target, addr, name string, ttl int64, drain time.Duration) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.ForceServerCodec(codec{}))
	registerGreeter(s, name)
	// The standard health service: health-checking clients stop picking a draining server.
	hs := health.NewServer()
	hs.SetServingStatus(serviceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()

	// Register "<target>/<addr>" -> {"Op":0,"Addr":"<addr>","Metadata":...} under a lease, as
	// the Registrar operator does for pods: grpc-go and registrar-resolver clients find it.
	ctx := context.Background()
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		return err
	}
	lease, err := cli.Grant(ctx, ttl)
	if err != nil {
		return err
	}
	real := lis.Addr().String()
	key := target + "/" + real
	md := map[string]any{"name": name}
	if err := em.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: real, Metadata: md}, clientv3.WithLease(lease.ID)); err != nil {
		return err
	}
	// Keep the lease alive while serving; if the process dies, the key expires with it.
	ka, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return err
	}
	go func() {
		for range ka {
		}
	}()
	fmt.Println("READY", real)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-served:
		return err
	}
	// Drain: NOT_SERVING first, then out of etcd, then keep answering the calls already
	// picked for the drain delay, then stop gracefully (in-flight calls finish).
	hs.Shutdown()
	if err := em.DeleteEndpoint(ctx, key); err != nil {
		fmt.Fprintln(os.Stderr, "deregistering:", err)
	}
	fmt.Println("DRAINING", real)
	time.Sleep(drain)
	s.GracefulStop()
	_, _ = cli.Revoke(ctx, lease.ID)
	fmt.Println("STOPPED", real)
	return nil
}
