// Command promql parses PromQL expressions with the Prometheus parser
// (github.com/prometheus/prometheus/promql/parser), one per line of stdin
// (a JSON string per line, so expressions may span lines), and prints one JSON line per
// expression: {"ok":true,"type":"vector"} or {"ok":false,"error":"..."}.
// The registrar tests run it on the chart's alert rules and dashboard queries.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	OK    bool   `json:"ok"`
	Type  string `json:"type,omitempty"`
	Error string `json:"error,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	// The default options: the functions and syntax every Prometheus accepts without feature flags.
	p := parser.NewParser(parser.Options{})
	for in.Scan() {
		var expr string
		if err := json.Unmarshal(in.Bytes(), &expr); err != nil {
			fmt.Fprintf(os.Stderr, "promql: input line is not a JSON string: %v\n", err)
			os.Exit(2)
		}
		r := result{OK: true}
		parsed, err := p.ParseExpr(expr)
		if err != nil {
			r = result{Error: err.Error()}
		} else {
			r.Type = string(parsed.Type())
		}
		if err := out.Encode(r); err != nil {
			fmt.Fprintf(os.Stderr, "promql: %v\n", err)
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "promql: reading stdin: %v\n", err)
		os.Exit(2)
	}
}
