// Command meshctl is layermesh's admin CLI, a client of the HTTP API of any node:
// inference, models, status, deploy and undeploy, and offline tools (gen-model).
//
// Every command takes --addr (env LAYERMESH_ADDR), --token / --token-file (env
// LAYERMESH_TOKEN, LAYERMESH_TOKEN_FILE) and --json. Output is a human table by
// default; progress bars go to stderr so stdout stays parseable.
//
// Exit codes scripts can rely on: 0 success; 1 the command was understood but failed
// (the node refused it, could not be reached, or - for doctor and bench - found a
// problem); 2 the command line is wrong (unknown command or flag, missing argument).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/layermesh/layermesh/api/client"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// errUsage marks a wrong command line; main exits 2 for it.
var errUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// command is one subcommand. Most talk to a node and are a few table entries: their own
// flags and argument check (flags), and what they ask the node and print (the step's
// call); runNodeCommand does the rest the same way for all of them. Offline commands
// (partition, gen-model, completion) parse their own command line in offline.
type command struct {
	summary string
	// flags registers the command's own flags, besides the common ones, and returns
	// the step that runs once they are parsed.
	flags func(fs *flag.FlagSet) step
	// timeout, when set, bounds the call whatever --timeout says.
	timeout time.Duration
	// subcommands, when set, make the first argument choose the command; usage is the
	// error for a missing one.
	subcommands map[string]command
	usage       string
	// offline, when set, runs the command on its raw arguments, without a node.
	offline func(ctx context.Context, args []string, stdout io.Writer) error
}

// step is a node command once its flags are parsed.
type step struct {
	// check rejects a wrong command line (exit 2) before anything is sent; nil
	// accepts any positional arguments.
	check func(pos []string) error
	call  func(ctx context.Context, in invocation) (output, error)
}

// invocation is what a node command's call gets.
type invocation struct {
	client *client.Client
	pos    []string
	// json is --json: the output goes as JSON, and nothing else is drawn.
	json bool
}

// output is what a node command prints: value as indented JSON with --json (a rawJSON
// verbatim), human otherwise.
type output struct {
	value any
	human func(w io.Writer) error
	// failed, when set, is the command's error after its output is printed: it ran, and
	// found a problem (doctor, bench).
	failed error
	// stream, when set, prints as the command runs (events, generate), --json or not;
	// value and human are then unused.
	stream func(w io.Writer) error
}

// rawJSON is JSON printed as it is, followed by a newline.
type rawJSON []byte

// commonFlagsOnly is the flags of a node command that has only the common ones.
func commonFlagsOnly(check func(pos []string) error, call func(context.Context, invocation) (output, error)) func(*flag.FlagSet) step {
	return func(*flag.FlagSet) step { return step{check: check, call: call} }
}

// exactArgs accepts exactly n positional arguments; any other count is a usage error
// with msg.
func exactArgs(n int, msg string) func(pos []string) error {
	return func(pos []string) error {
		if len(pos) != n {
			return usagef("%s", msg)
		}
		return nil
	}
}

// commands is filled in init so that command functions may print the list.
var commands map[string]command

func init() {
	commands = map[string]command{
		"infer":      {summary: "run a model: infer MODEL --input NAME=VALUES|@file.json|@file.npy", flags: inferFlags},
		"generate":   {summary: `generate text, printed as it comes: generate MODEL "PROMPT" [--max-tokens N --temperature T --seed S]`, flags: generateFlags},
		"models":     {summary: "list the models and their readiness", flags: commonFlagsOnly(exactArgs(0, "models takes no arguments"), callModels)},
		"model":      {summary: "show one model: status, plan and signature", flags: commonFlagsOnly(exactArgs(1, "want exactly one model NAME"), callModel)},
		"status":     {summary: "node and cluster status, readiness and models", flags: statusFlags},
		"nodes":      {summary: "list the nodes", flags: commonFlagsOnly(exactArgs(0, "nodes takes no arguments"), callNodes)},
		"deploy":     {summary: "upload and deploy a model: deploy FILE.onnx --name NAME [--tokenizer PATH --chat-template FILE]", flags: deployFlags},
		"undeploy":   {summary: "remove a model: undeploy NAME", flags: commonFlagsOnly(exactArgs(1, "want exactly one model NAME"), callUndeploy)},
		"partition":  {summary: "split a model into pipeline stages offline: partition MODEL.onnx --stages K [--budgets ...] [--out DIR] [--verify]", offline: runPartition},
		"compress":   {summary: "quantize or prune a model offline: compress MODEL.onnx --out OUT.onnx [--quantize int8|int4|dynamic|static] [--prune R] [--verify N]", offline: runCompress},
		"gen-model":  {summary: "write a generated model: gen-model KIND [--layers N ...] -o FILE.onnx", offline: runGenModel},
		"bench":      {summary: "latency percentiles and throughput: bench MODEL --input ... [--requests N] [--concurrency C]", flags: benchFlags},
		"completion": {summary: "print a shell completion script: completion bash|zsh", offline: runCompletion},
		// version reports the node's version as text, not as a failure, and waits for
		// it only briefly: it must answer when no node does.
		"version":    {summary: "print the client's and the node's version", flags: commonFlagsOnly(nil, callVersion), timeout: 3 * time.Second},
		"plan":       {summary: "show a model's stages and the nodes serving each: plan NAME", flags: commonFlagsOnly(exactArgs(1, "want exactly one NAME"), callPlan)},
		"drain":      {summary: "move a node's stages elsewhere before maintenance: drain NODE [--wait 2m]", flags: drainFlags},
		"undrain":    {summary: "let a drained node take stages again: undrain NODE", flags: commonFlagsOnly(exactArgs(1, "want exactly one NAME"), callUndrain)},
		"remove":     {summary: "take a node out of the cluster: remove NODE", flags: commonFlagsOnly(exactArgs(1, "want exactly one NAME"), callRemove)},
		"join-token": {summary: "print the cluster secret and seeds a new node joins with", flags: commonFlagsOnly(exactArgs(0, "join-token takes no arguments"), callJoinToken)},
		"doctor":     {summary: "why can't a node see its peers: doctor [NODE|PEER-ID|ADDR ...]", flags: commonFlagsOnly(nil, callDoctor)},
		"events":     {summary: "the cluster's recent events: events [--follow] [--recent N] (--json: one object a line)", flags: eventsFlags},
		"token": {
			summary:     "API tokens: token create --scope admin|infer [--name N] | token list | token revoke ID",
			usage:       "want: token create --scope admin|infer [--name N] | token list | token revoke ID",
			subcommands: tokenCommands,
		},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is meshctl with its exit code: 0 success, 1 failed, 2 a wrong command line.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "meshctl: unknown command %q\n\n", args[0])
		printUsage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := runCommand(ctx, args[0], cmd, args[1:], stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "meshctl %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "meshctl %s: %v\n", args[0], describe(err))
		return 1
	}
}

// runCommand runs cmd, named name, on its arguments.
func runCommand(ctx context.Context, name string, cmd command, args []string, stdout io.Writer) error {
	switch {
	case cmd.offline != nil:
		return cmd.offline(ctx, args, stdout)
	case cmd.subcommands != nil:
		if len(args) == 0 {
			return usagef("%s", cmd.usage)
		}
		sub, ok := cmd.subcommands[args[0]]
		if !ok {
			sub = unknownSubcommand(name, args[0], cmd.subcommands)
		}
		return runCommand(ctx, name+" "+args[0], sub, args[1:], stdout)
	default:
		return runNodeCommand(ctx, name, cmd, args, stdout)
	}
}

// unknownSubcommand parses the common flags, so that a bad flag is reported as one,
// then refuses the subcommand.
func unknownSubcommand(name, sub string, known map[string]command) command {
	names := slices.Sorted(maps.Keys(known))
	want := strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
	refuse := func([]string) error { return usagef("unknown %s command %q: want %s", name, sub, want) }
	return command{flags: commonFlagsOnly(refuse, nil)}
}

// runNodeCommand is every node command: the common flags and its own, its argument
// check, a client and a context, its call, then its output as JSON or for people.
func runNodeCommand(ctx context.Context, name string, cmd command, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	c := addCommon(fs)
	st := cmd.flags(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if st.check != nil {
		if err := st.check(pos); err != nil {
			return err
		}
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	var cancel context.CancelFunc
	if cmd.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, cmd.timeout)
	} else {
		ctx, cancel = c.context(ctx)
	}
	defer cancel()
	out, err := st.call(ctx, invocation{client: cl, pos: pos, json: c.json})
	if err != nil {
		return err
	}
	raw, isRaw := out.value.(rawJSON)
	switch {
	case out.stream != nil:
		err = out.stream(stdout)
	case c.json && isRaw:
		_, err = fmt.Fprintf(stdout, "%s\n", raw)
	case c.json:
		err = printJSON(stdout, out.value)
	case out.human != nil:
		err = out.human(stdout)
	}
	if err != nil {
		return err
	}
	return out.failed
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: meshctl COMMAND [flags]   (meshctl COMMAND -h for its flags)")
	fmt.Fprintln(w)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", n, commands[n].summary)
	}
	tw.Flush()
	fmt.Fprintln(w, "\ncommon flags: --addr (LAYERMESH_ADDR), --token (LAYERMESH_TOKEN), --token-file (LAYERMESH_TOKEN_FILE), --ca-cert (LAYERMESH_CA_CERT), --json, --timeout")
	fmt.Fprintln(w, "exit codes: 0 success, 1 the command failed (refused, unreachable, or a problem found), 2 a wrong command line")
}

// describe adds a hint to the errors people hit first.
func describe(err error) error {
	var e *client.Error
	if errors.As(err, &e) && e.Code == "unauthorized" {
		return fmt.Errorf("%w\n  hint: pass the admin token with --token-file <data-dir>/admin.token or LAYERMESH_TOKEN", err)
	}
	return err
}

// common are the flags every command that talks to a node takes.
type common struct {
	addr      string
	token     string
	tokenFile string
	json      bool
	timeout   time.Duration
	caCert    string
}

func addCommon(fs *flag.FlagSet) *common {
	c := &common{}
	addr := os.Getenv("LAYERMESH_ADDR")
	if addr == "" {
		addr = "127.0.0.1:8000"
	}
	fs.StringVar(&c.addr, "addr", addr, "node API address, host:port or URL (env LAYERMESH_ADDR)")
	fs.StringVar(&c.token, "token", "", "API token (env LAYERMESH_TOKEN)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the API token, e.g. <data-dir>/admin.token (env LAYERMESH_TOKEN_FILE)")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of a table")
	fs.DurationVar(&c.timeout, "timeout", 0, "give up after this long (0: no limit)")
	fs.StringVar(&c.caCert, "ca-cert", os.Getenv("LAYERMESH_CA_CERT"), "PEM certificate(s) to trust for an https:// --addr, e.g. the node's --tls-cert (env LAYERMESH_CA_CERT; default: the system's roots)")
	return c
}

// httpClient trusts the certificates of --ca-cert only, or the system's roots when
// none is given.
func (c *common) httpClient() (*http.Client, error) {
	if c.caCert == "" {
		return http.DefaultClient, nil
	}
	pem, err := os.ReadFile(c.caCert)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, usagef("--ca-cert %s holds no PEM certificate", c.caCert)
	}
	return &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyFromEnvironment,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}, nil
}

// client builds the API client; the token comes from --token, --token-file,
// LAYERMESH_TOKEN or LAYERMESH_TOKEN_FILE, in that order.
func (c *common) client() (*client.Client, error) {
	tok := c.token
	file := c.tokenFile
	if tok == "" && file == "" {
		tok = os.Getenv("LAYERMESH_TOKEN")
		if tok == "" {
			file = os.Getenv("LAYERMESH_TOKEN_FILE")
		}
	}
	if tok == "" && file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	hc, err := c.httpClient()
	if err != nil {
		return nil, err
	}
	return client.New(c.addr, client.WithToken(tok), client.WithHTTPClient(hc))
}

func (c *common) context(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

// parseArgs parses flags that may come before, between or after positional
// arguments (Go's flag package stops at the first positional one).
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fs.PrintDefaults()
				return nil, err
			}
			return nil, usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// humanBytes prints a byte count the way people read them.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
