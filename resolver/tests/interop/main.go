// Command interop is the Go side of the resolver's interoperability tests: it speaks etcd's
// gRPC naming through the official Go packages (go.etcd.io/etcd/client/v3/naming/resolver and
// naming/endpoints) and grpc-go, against the Rust implementation.
//
//	interop client -etcd URL -target T -n N -expect K [-authority A]
//	                                                    grpc-go round_robin client; prints {"backend": calls}
//	interop serve  -etcd URL -target T -addr A -name N   Greeter server registered with endpoints.Manager
//	interop list   -etcd URL -target T                   endpoints.Manager.List as JSON {key: {Addr, Metadata}}
//	interop write  -etcd URL -target T -in FILE          AddEndpoint for each JSON line {key, addr, metadata}
//	interop decode -in FILE                             decodes each hex-encoded line as etcd's Go resolver does
//	                                                    (json.Unmarshal into internal.Update); prints "ok <hex Addr>" or "err"
//	interop bench  -etcd URL -target T -expect K [-authority A] -concurrency C -warmup W -duration D -max N
//	                                                    closed-loop load through the grpc-go client; prints
//	                                                    {"requests","errors","elapsed_ns","p50_ns","p99_ns","backends"}
//
// The Greeter messages are encoded by hand (protowire) so no generated code is needed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

const sayHello = "/greeter.v1.Greeter/SayHello"

type helloRequest struct{ Name string }

type helloReply struct{ Message, Backend string }

// codec encodes the two Greeter messages in protobuf wire format.
type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) ([]byte, error) {
	var b []byte
	str := func(num protowire.Number, s string) {
		if s != "" {
			b = protowire.AppendTag(b, num, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	switch m := v.(type) {
	case *helloRequest:
		str(1, m.Name)
	case *helloReply:
		str(1, m.Message)
		str(2, m.Backend)
	default:
		return nil, fmt.Errorf("cannot marshal %T", v)
	}
	return b, nil
}

func (codec) Unmarshal(data []byte, v any) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			data = data[n:]
			continue
		}
		s, n := protowire.ConsumeString(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		switch m := v.(type) {
		case *helloRequest:
			if num == 1 {
				m.Name = s
			}
		case *helloReply:
			switch num {
			case 1:
				m.Message = s
			case 2:
				m.Backend = s
			}
		default:
			return fmt.Errorf("cannot unmarshal into %T", v)
		}
	}
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: interop client|serve|list|write|bench [flags]"))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	etcd := fs.String("etcd", "http://127.0.0.1:2379", "etcd endpoint")
	target := fs.String("target", "", "naming target")
	n := fs.Int("n", 300, "calls to count (client)")
	expect := fs.Int("expect", 1, "distinct backends to see before counting (client)")
	addr := fs.String("addr", "127.0.0.1:0", "listen address (serve)")
	name := fs.String("name", "go", "backend name (serve)")
	in := fs.String("in", "", "JSON lines to write (write)")
	authority := fs.String("authority", "", "override :authority (client, bench)")
	concurrency := fs.Int("concurrency", 32, "concurrent callers (bench)")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "unmeasured load before measuring (bench)")
	duration := fs.Duration("duration", 3*time.Second, "measured load at most this long (bench)")
	limit := fs.Int("max", 2000000, "at most this many measured calls (bench)")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail(err)
	}
	if os.Args[1] == "decode" {
		if err := decode(*in); err != nil {
			fail(err)
		}
		return
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{*etcd},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		fail(err)
	}
	defer cli.Close()
	switch os.Args[1] {
	case "client":
		err = client(cli, *target, *authority, *n, *expect)
	case "serve":
		err = serve(cli, *target, *addr, *name)
	case "list":
		err = list(cli, *target)
	case "write":
		err = write(cli, *target, *in)
	case "follow":
		err = follow(cli, *target, *authority, *duration)
	case "bench":
		err = bench(cli, *target, *authority, *expect, *concurrency, *warmup, *duration, *limit)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

// follow calls the target every 20 ms for duration (each call waits at most 1 s) and prints one
// line per call, "<unix ms> OK <backend>" or "<unix ms> ERR <error>", for a test to read while it
// changes etcd underneath.
func follow(cli *clientv3.Client, target, authority string, duration time.Duration) error {
	conn, err := dial(cli, target, authority)
	if err != nil {
		return err
	}
	defer conn.Close()
	out := bufio.NewWriter(os.Stdout)
	deadline := time.Now().Add(duration)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var reply helloReply
		err := conn.Invoke(ctx, sayHello, &helloRequest{Name: "follow"}, &reply)
		cancel()
		if err != nil {
			fmt.Fprintf(out, "%d ERR %v\n", time.Now().UnixMilli(), err)
		} else {
			fmt.Fprintf(out, "%d OK %s\n", time.Now().UnixMilli(), reply.Backend)
		}
		out.Flush()
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "interop:", err)
	os.Exit(1)
}

// dial connects to the target through grpc-go with etcd's resolver and round_robin. By default
// grpc-go sends the target path ("registrar/shop/greeter") as :authority, which is not a valid
// authority; HTTP/2 servers that check it (hyper/h2, hence tonic) reset such streams, so clients
// of tonic servers set one with -authority (grpc.WithAuthority).
func dial(cli *clientv3.Client, target, authority string) (*grpc.ClientConn, error) {
	builder, err := resolver.NewBuilder(cli)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{
		grpc.WithResolvers(builder),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{})),
	}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	return grpc.NewClient("etcd:///"+target, opts...)
}

// call makes one SayHello (waiting for a READY backend, at most 10 s); the backend's name.
func call(conn *grpc.ClientConn, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply helloReply
	err := conn.Invoke(ctx, sayHello, &helloRequest{Name: name}, &reply, grpc.WaitForReady(true))
	return reply.Backend, err
}

// awaitBackends calls until expect distinct backends answered (round_robin only picks READY
// subchannels), at most 20 s.
func awaitBackends(conn *grpc.ClientConn, name string, expect int) error {
	seen := map[string]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < expect {
		if time.Now().After(deadline) {
			return fmt.Errorf("saw only %d of %d backends: %v", len(seen), expect, seen)
		}
		b, err := call(conn, name)
		if err != nil {
			return err
		}
		seen[b] = true
	}
	return nil
}

// client calls the target n times once every expected backend answered; prints the calls per
// backend.
func client(cli *clientv3.Client, target, authority string, n, expect int) error {
	conn, err := dial(cli, target, authority)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := awaitBackends(conn, "go", expect); err != nil {
		return err
	}
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		b, err := call(conn, "go")
		if err != nil {
			return fmt.Errorf("call %d: %w", i, err)
		}
		counts[b]++
	}
	return json.NewEncoder(os.Stdout).Encode(counts)
}

// loadResult is what one closed-loop load run measured.
type loadResult struct {
	Requests  int            `json:"requests"`
	Errors    int            `json:"errors"`
	ElapsedNs int64          `json:"elapsed_ns"`
	P50Ns     int64          `json:"p50_ns"`
	P99Ns     int64          `json:"p99_ns"`
	Backends  map[string]int `json:"backends"`
}

// load runs concurrency callers in a closed loop on one connection until duration has passed
// or limit calls were made (limit/concurrency each); latencies of successful calls only.
func load(conn *grpc.ClientConn, concurrency int, duration time.Duration, limit int) loadResult {
	perCaller := limit / concurrency
	start := time.Now()
	deadline := start.Add(duration)
	type callerResult struct {
		latencies []time.Duration
		backends  map[string]int
		errors    int
	}
	results := make([]callerResult, concurrency)
	var wg sync.WaitGroup
	for c := 0; c < concurrency; c++ {
		wg.Add(1)
		go func(r *callerResult) {
			defer wg.Done()
			r.backends = map[string]int{}
			for i := 0; i < perCaller && time.Now().Before(deadline); i++ {
				t := time.Now()
				b, err := call(conn, "bench")
				if err != nil {
					r.errors++
					continue
				}
				r.latencies = append(r.latencies, time.Since(t))
				r.backends[b]++
			}
		}(&results[c])
	}
	wg.Wait()
	out := loadResult{ElapsedNs: time.Since(start).Nanoseconds(), Backends: map[string]int{}}
	var all []time.Duration
	for _, r := range results {
		all = append(all, r.latencies...)
		out.Errors += r.errors
		for b, n := range r.backends {
			out.Backends[b] += n
		}
	}
	out.Requests = len(all)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out.P50Ns = percentile(all, 0.50).Nanoseconds()
	out.P99Ns = percentile(all, 0.99).Nanoseconds()
	return out
}

// percentile of sorted latencies: the element at round((len-1)*p).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1)*p + 0.5)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// bench measures the grpc-go round_robin client: once expect backends answered and after an
// unmeasured warmup, a closed-loop load bounded by duration and limit; prints its loadResult.
func bench(cli *clientv3.Client, target, authority string, expect, concurrency int, warmup, duration time.Duration, limit int) error {
	if concurrency < 1 || limit < concurrency {
		return fmt.Errorf("need 1 <= concurrency <= max, got %d and %d", concurrency, limit)
	}
	conn, err := dial(cli, target, authority)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := awaitBackends(conn, "bench", expect); err != nil {
		return err
	}
	if warmup > 0 {
		load(conn, concurrency, warmup, limit)
	}
	return json.NewEncoder(os.Stdout).Encode(load(conn, concurrency, duration, limit))
}

// serve runs a Greeter named name on addr, registered under target with a kept-alive lease,
// until SIGTERM/SIGINT (then deregistered).
func serve(cli *clientv3.Client, target, addr, name string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.ForceServerCodec(codec{}))
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: "greeter.v1.Greeter",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "SayHello",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var req helloRequest
				if err := dec(&req); err != nil {
					return nil, err
				}
				return &helloReply{Message: "Hello " + req.Name, Backend: name}, nil
			},
		}},
	}, struct{}{})
	go func() { _ = s.Serve(lis) }()

	ctx := context.Background()
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		return err
	}
	lease, err := cli.Grant(ctx, 10)
	if err != nil {
		return err
	}
	real := lis.Addr().String()
	key := target + "/" + real
	md := map[string]any{"lang": "go", "name": name}
	if err := em.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: real, Metadata: md}, clientv3.WithLease(lease.ID)); err != nil {
		return err
	}
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
	<-sig
	if err := em.DeleteEndpoint(ctx, key); err != nil {
		return err
	}
	s.Stop()
	return nil
}

// list prints what Go's reader makes of the target's values.
func list(cli *clientv3.Client, target string) error {
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		return err
	}
	eps, err := em.List(context.Background())
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(eps)
}

// write registers each {key, addr, metadata} line with endpoints.Manager. Metadata numbers are
// kept exact (json.Number), as a Go program holding the exact value would write them.
func write(cli *clientv3.Client, target, in string) error {
	em, err := endpoints.NewManager(cli, target)
	if err != nil {
		return err
	}
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var line struct {
			Key      string
			Addr     string
			Metadata json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return err
		}
		var md any
		dec := json.NewDecoder(bytes.NewReader(line.Metadata))
		dec.UseNumber()
		if err := dec.Decode(&md); err != nil {
			return err
		}
		if err := em.AddEndpoint(context.Background(), line.Key, endpoints.Endpoint{Addr: line.Addr, Metadata: md}); err != nil {
			return err
		}
	}
	return sc.Err()
}

// update is naming/endpoints/internal.Update (an internal package, so declared again here with
// the same field types): what etcd's Go resolver unmarshals every value into.
type update struct {
	Op       uint8
	Addr     string
	Metadata interface{}
}

// decode unmarshals each hex-encoded line of file as etcd's resolver does and prints one verdict
// per line: "ok <hex Addr>" or "err".
func decode(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		value, err := hex.DecodeString(string(line))
		if err != nil {
			return err
		}
		var up update
		if err := json.Unmarshal(value, &up); err != nil {
			fmt.Fprintln(out, "err")
			continue
		}
		fmt.Fprintf(out, "ok %s\n", hex.EncodeToString([]byte(up.Addr)))
	}
	return nil
}
