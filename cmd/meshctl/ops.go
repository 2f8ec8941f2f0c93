package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
)

// oneName parses a command that takes exactly one NAME and the common flags, plus
// whatever extra flags add registers.
func oneName(name string, args []string, add func(*flag.FlagSet)) (*common, string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	c := addCommon(fs)
	if add != nil {
		add(fs)
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, "", err
	}
	if len(pos) != 1 {
		return nil, "", usagef("want exactly one NAME")
	}
	return c, pos[0], nil
}

// actionResult is what the commands that change one thing print with --json.
type actionResult struct {
	Action string `json:"action"`
	Target string `json:"target"`
	// Waited is how long the command waited for the change to take effect.
	Waited float64 `json:"waited_seconds,omitempty"`
}

func printAction(c *common, stdout io.Writer, res actionResult, human string) error {
	if c.json {
		return printJSON(stdout, res)
	}
	_, err := fmt.Fprintln(stdout, human)
	return err
}

// runDrain marks a node draining; --wait waits until its stages have moved.
func runDrain(ctx context.Context, args []string, stdout io.Writer) error {
	var wait time.Duration
	c, name, err := oneName("drain", args, func(fs *flag.FlagSet) {
		fs.DurationVar(&wait, "wait", 0, "wait up to this long until the node serves no stage (0: do not wait)")
	})
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	if err := cl.DrainNode(ctx, name); err != nil {
		return err
	}
	res := actionResult{Action: "drain", Target: name}
	human := fmt.Sprintf("draining %s: it takes no new stages and its stages move elsewhere", name)
	if wait > 0 {
		start := time.Now()
		if err := waitDrained(ctx, cl, name, wait); err != nil {
			return err
		}
		res.Waited = time.Since(start).Seconds()
		human = fmt.Sprintf("drained %s: it serves no stage (%.1fs); it can be stopped or removed", name, res.Waited)
	}
	return printAction(c, stdout, res, human)
}

// waitDrained polls the node list until name serves no stage.
func waitDrained(ctx context.Context, cl *client.Client, name string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last string
	for {
		nodes, err := cl.Nodes(ctx)
		if err == nil {
			i := slices.IndexFunc(nodes, func(n wire.NodeStatus) bool { return n.Name == name })
			if i < 0 {
				return fmt.Errorf("node %s is no longer listed", name)
			}
			if len(nodes[i].Models) == 0 {
				return nil
			}
			last = strings.Join(nodes[i].Models, ", ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s still serves %s after %s: %w", name, last, d, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func runUndrain(ctx context.Context, args []string, stdout io.Writer) error {
	c, name, err := oneName("undrain", args, nil)
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	if err := cl.UndrainNode(ctx, name); err != nil {
		return err
	}
	return printAction(c, stdout, actionResult{Action: "undrain", Target: name}, fmt.Sprintf("%s takes stages again", name))
}

func runRemove(ctx context.Context, args []string, stdout io.Writer) error {
	c, name, err := oneName("remove", args, nil)
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	if err := cl.RemoveNode(ctx, name); err != nil {
		return err
	}
	return printAction(c, stdout, actionResult{Action: "remove", Target: name}, fmt.Sprintf("removed %s from the cluster", name))
}

// runPlan shows a model's plan: its stages and the nodes serving each.
func runPlan(ctx context.Context, args []string, stdout io.Writer) error {
	c, name, err := oneName("plan", args, nil)
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	m, err := cl.Model(ctx, name)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, m)
	}
	fmt.Fprintf(stdout, "%s version %s: %d stages, ready: %s\n", m.Name, m.Version, len(m.Stages), yesNo(m.Ready))
	if m.Reason != "" {
		fmt.Fprintf(stdout, "  %s\n", m.Reason)
	}
	tw := newTable(stdout)
	fmt.Fprintln(tw, "STAGE\tREADY\tREPLICAS")
	for _, s := range m.Stages {
		fmt.Fprintf(tw, "%d\t%s\t%s\n", s.Index, yesNo(s.Ready), strings.Join(s.Replicas, ", "))
	}
	return tw.Flush()
}

func runJoinToken(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("join-token", flag.ContinueOnError)
	c := addCommon(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("join-token takes no arguments")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	jt, err := cl.JoinToken(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, jt)
	}
	fmt.Fprintf(stdout, "cluster %s\nsecret  %s\n\nOn the new node:\n  echo %s > cluster.secret && chmod 600 cluster.secret\n", jt.ClusterID, jt.Secret, jt.Secret)
	for _, s := range jt.Seeds {
		fmt.Fprintf(stdout, "  meshnode --join %s --cluster-secret-file cluster.secret\n", s)
	}
	return nil
}

// runDoctor asks a node why it can or cannot see its peers; it fails (exit 1) when
// any peer has a problem, so a script can use it as a check.
func runDoctor(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	c := addCommon(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	rep, err := cl.Doctor(ctx, pos...)
	if err != nil {
		return err
	}
	bad := 0
	for _, p := range rep.Peers {
		if p.Cause != "" {
			bad++
		}
	}
	if c.json {
		if err := printJSON(stdout, rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "seen from %s:\n", rep.Self)
		tw := newTable(stdout)
		fmt.Fprintln(tw, "TARGET\tNAME\tDISCOVERED\tREACHABLE\tADMITTED\tSTATE\tRTT\tCAUSE")
		for _, p := range rep.Peers {
			rtt := "-"
			if p.RTTMillis > 0 {
				rtt = fmt.Sprintf("%.2fms", p.RTTMillis)
			}
			cause := p.Cause
			if cause == "" {
				cause = "ok"
			} else if p.Detail != "" {
				cause += ": " + p.Detail
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortTarget(p.Target), p.Name, yesNo(p.Discovered), yesNo(p.Reachable), yesNo(p.Admitted), p.State, rtt, cause)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d peers have a problem", bad, len(rep.Peers))
	}
	return nil
}

// shortTarget shortens a peer id for a table (a multiaddr or name stays whole).
func shortTarget(t string) string {
	if len(t) > 20 && !strings.ContainsAny(t, "/:") {
		return t[:8] + "…" + t[len(t)-6:]
	}
	return t
}

// runToken manages API tokens: create, list, revoke.
func runToken(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("want: token create --scope admin|infer [--name N] | token list | token revoke ID")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("token "+sub, flag.ContinueOnError)
	c := addCommon(fs)
	var scope, name string
	if sub == "create" {
		fs.StringVar(&scope, "scope", "", "admin or infer (required)")
		fs.StringVar(&name, "name", "", "the token's id (default: a generated one)")
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	switch {
	case sub == "create" && (len(pos) != 0 || (scope != "admin" && scope != "infer")):
		return usagef("want: token create --scope admin|infer [--name N]")
	case sub == "list" && len(pos) != 0:
		return usagef("token list takes no arguments")
	case sub == "revoke" && len(pos) != 1:
		return usagef("want: token revoke ID")
	case sub != "create" && sub != "list" && sub != "revoke":
		return usagef("unknown token command %q: want create, list or revoke", sub)
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := c.context(ctx)
	defer cancel()
	switch sub {
	case "create":
		tok, err := cl.CreateToken(ctx, scope, name)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, tok)
		}
		fmt.Fprintf(stdout, "token %s (scope %s) created; its secret, shown only now:\n%s\n", tok.ID, tok.Scope, tok.Secret)
		return nil
	case "list":
		toks, err := cl.Tokens(ctx)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, wire.TokenList{Tokens: toks})
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "ID\tSCOPE\tCREATED\tREVOKED")
		for _, t := range toks {
			revoked := "no"
			if t.Revoked {
				revoked = t.RevokedAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Scope, t.Created.Format(time.RFC3339), revoked)
		}
		return tw.Flush()
	default:
		if err := cl.RevokeToken(ctx, pos[0]); err != nil {
			return err
		}
		return printAction(c, stdout, actionResult{Action: "revoke", Target: pos[0]}, fmt.Sprintf("token %s revoked", pos[0]))
	}
}

// waitModelReady polls the model until every stage has a ready replica, drawing the
// distribution's progress (stages ready of stages) on w when w is not nil.
func waitModelReady(ctx context.Context, cl *client.Client, name string, d time.Duration, w io.Writer) (wire.ModelStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var bar *progressBar
	if w != nil {
		bar = &progressBar{w: w, label: "distribute " + name, start: time.Now(), unit: "stages"}
		defer bar.done()
	}
	var last error
	for {
		m, err := cl.Model(ctx, name)
		if err == nil {
			ready := 0
			for _, s := range m.Stages {
				if s.Ready {
					ready++
				}
			}
			if bar != nil && len(m.Stages) > 0 {
				bar.update(int64(ready), int64(len(m.Stages)))
			}
			if m.Ready {
				return m, nil
			}
			last = fmt.Errorf("%d of %d stages ready %s", ready, len(m.Stages), m.Reason)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return wire.ModelStatus{}, fmt.Errorf("model %s not ready after %s: %w", name, d, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// progressOut is where progress bars go: stderr, so stdout stays parseable.
var progressOut io.Writer = os.Stderr
