package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// dial connects to every backend of target through etcd's resolver, balancing round-robin.
func dial(cli *clientv3.Client, target, authority string) (*grpc.ClientConn, error) {
	// etcd's resolver lists and watches "<target>/": a trailing slash here finds nothing, and
	// grpc-go then lets every RPC wait until its deadline without a log line.
	if strings.HasSuffix(target, "/") {
		fmt.Fprintf(os.Stderr, "warning: target %q ends with '/': etcd's resolver will find no backend; drop the slash\n", target)
	}
	builder, err := resolver.NewBuilder(cli)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("etcd:///"+target,
		grpc.WithResolvers(builder),
		// grpc-go's default policy is pick_first (one backend): ask for round_robin.
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		// By default grpc-go sends the target path ("registrar/demo/greeter") as :authority,
		// which is not a valid authority: HTTP/2 servers that check it (tonic, through hyper)
		// reset the stream with PROTOCOL_ERROR. Any host name does.
		grpc.WithAuthority(authority),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{})),
	)
}

// summary is the client's last output line.
type summary struct {
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Backends map[string]int `json:"backends"`
	Codes    map[string]int `json:"codes"`
}

// runClient makes n calls, one every `every`, each with its own deadline; prints one line per
// call and a JSON summary; fails when a call failed.
func runClient(cli *clientv3.Client, target, authority string, n int, every, timeout time.Duration) error {
	conn, err := dial(cli, target, authority)
	if err != nil {
		return err
	}
	defer conn.Close()
	sum := summary{Backends: map[string]int{}, Codes: map[string]int{}}
	for i := 0; i < n; i++ {
		if i > 0 {
			time.Sleep(every)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		var reply HelloReply
		err := conn.Invoke(ctx, sayHello, &HelloRequest{Name: fmt.Sprint("call ", i)}, &reply)
		cancel()
		if err != nil {
			code := status.Code(err).String()
			fmt.Printf("call %d: %s\n", i, err)
			sum.Failed++
			sum.Codes[code]++
			continue
		}
		fmt.Printf("%s (from %s)\n", reply.Message, reply.Backend)
		sum.OK++
		sum.Backends[reply.Backend]++
	}
	if err := json.NewEncoder(os.Stdout).Encode(sum); err != nil {
		return err
	}
	if sum.Failed > 0 {
		return fmt.Errorf("%d of %d calls failed: %v", sum.Failed, n, sum.Codes)
	}
	return nil
}
