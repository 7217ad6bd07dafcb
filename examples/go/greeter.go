package main

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

// The Greeter service of Registrar's proto/greeter.proto, written out by hand (protoc-gen-go and
// protoc-gen-go-grpc generate the same from the .proto file).
const (
	serviceName = "greeter.v1.Greeter"
	sayHello    = "/greeter.v1.Greeter/SayHello"
)

// HelloRequest is greeter.v1.HelloRequest.
type HelloRequest struct{ Name string }

// HelloReply is greeter.v1.HelloReply.
type HelloReply struct{ Message, Backend string }

// registerGreeter adds a Greeter answering as backend name to s.
func registerGreeter(s *grpc.Server, name string) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "SayHello",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var req HelloRequest
				if err := dec(&req); err != nil {
					return nil, err
				}
				return &HelloReply{Message: "Hello " + req.Name, Backend: name}, nil
			},
		}},
	}, struct{}{})
}

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
	case *HelloRequest:
		str(1, m.Name)
	case *HelloReply:
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
		case *HelloRequest:
			if num == 1 {
				m.Name = s
			}
		case *HelloReply:
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
