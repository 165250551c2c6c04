// Command chatctl is a command-line client for chatd.
//
// Usage:
//
//	chatctl [global flags] COMMAND [ARGS] [FLAGS]
//
// Run "chatctl help" for the list of commands and "chatctl help COMMAND" for
// one command's arguments and flags. The logged-in device session is stored
// in the config dir (--config-dir), so two users can be driven from one shell
// with two config dirs:
//
//	chatctl --config-dir /tmp/alice login alice --password secret-a --device laptop
//	chatctl --config-dir /tmp/bob   login bob   --password secret-b --device phone
//	chatctl --config-dir /tmp/alice send bob "hello"
//	chatctl --config-dir /tmp/bob   sync
//
// Errors are printed as "chatctl: <gRPC code>: <message>" on stderr with
// exit status 1; usage errors exit with status 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/chatd/chatd/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const defaultServer = "127.0.0.1:9090"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// env is the state shared by the commands of one invocation.
type env struct {
	server         string
	serverExplicit bool // --server or CHATCTL_SERVER was given
	configDir      string
	json           bool
	timeout        time.Duration
	stdout, stderr io.Writer

	creds  *credentials
	client *client.Client
}

// command is one chatctl subcommand. setup defines the command's flags on
// fs and returns the function that runs it with the positional arguments.
type command struct {
	name    string // "send", or "group create"
	args    string // positional arguments synopsis
	summary string
	detail  string
	setup   func(fs *flag.FlagSet) func(ctx context.Context, e *env, args []string) error
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	global := flag.NewFlagSet("chatctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	serverDefault := os.Getenv("CHATCTL_SERVER")
	global.StringVar(&e.server, "server", serverDefault, "chat server `HOST:PORT` (default $CHATCTL_SERVER, else the server stored at login, else "+defaultServer+")")
	global.StringVar(&e.configDir, "config-dir", os.Getenv("CHATCTL_CONFIG_DIR"), "`DIR` holding the logged-in credentials (default $CHATCTL_CONFIG_DIR, else "+defaultConfigDirDoc()+")")
	global.BoolVar(&e.json, "json", false, "print JSON Lines (one protojson object per line) instead of text")
	global.DurationVar(&e.timeout, "timeout", 10*time.Second, "timeout of each unary call and of connecting the Chat stream")
	help := global.Bool("help", false, "show help")
	global.BoolVar(help, "h", false, "show help")

	if err := global.Parse(args); err != nil {
		fmt.Fprintf(stderr, "chatctl: %v\n", err)
		fmt.Fprintln(stderr, "Run 'chatctl help' for usage.")
		return 2
	}
	e.serverExplicit = serverDefault != ""
	global.Visit(func(f *flag.Flag) {
		if f.Name == "server" {
			e.serverExplicit = true
		}
	})
	rest := global.Args()
	if *help {
		printUsage(stdout, global)
		return 0
	}
	if len(rest) == 0 {
		printUsage(stderr, global)
		return 2
	}
	if rest[0] == "help" {
		return runHelp(stdout, stderr, global, rest[1:])
	}
	cmd, cmdArgs := lookup(rest)
	if cmd == nil {
		fmt.Fprintf(stderr, "chatctl: unknown command %q\nRun 'chatctl help' for usage.\n", strings.Join(rest[:min(2, len(rest))], " "))
		return 2
	}
	if e.configDir == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			fmt.Fprintf(stderr, "chatctl: no config dir: %v (use --config-dir)\n", err)
			return 2
		}
		e.configDir = filepath.Join(dir, "chatctl")
	}

	fs := flag.NewFlagSet("chatctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runFn := cmd.setup(fs)
	pos, err := parseInterspersed(fs, cmdArgs)
	if errors.Is(err, flag.ErrHelp) {
		printCommandHelp(stdout, cmd)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "chatctl %s: %v\nRun 'chatctl help %s' for usage.\n", cmd.name, err, cmd.name)
		return 2
	}

	ctx := context.Background()
	err = runFn(ctx, e, pos)
	if e.client != nil {
		e.client.Close()
	}
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "chatctl %s: %s\nRun 'chatctl help %s' for usage.\n", cmd.name, ue.msg, cmd.name)
		return 2
	}
	st := toStatus(err)
	fmt.Fprintf(stderr, "chatctl: %s: %s\n", st.Code(), st.Message())
	return 1
}

// toStatus converts any error to a gRPC status, mapping context errors to
// Canceled and DeadlineExceeded.
func toStatus(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.FromContextError(err)
	}
	return status.New(codes.Unknown, err.Error())
}

func defaultConfigDirDoc() string {
	if dir, err := os.UserConfigDir(); err == nil {
		return filepath.Join(dir, "chatctl")
	}
	return "$XDG_CONFIG_HOME/chatctl"
}

// lookup finds the command named by the first one or two words of args.
func lookup(args []string) (*command, []string) {
	if len(args) >= 2 {
		if c := findCommand(args[0] + " " + args[1]); c != nil {
			return c, args[2:]
		}
	}
	if c := findCommand(args[0]); c != nil {
		return c, args[1:]
	}
	return nil, nil
}

func findCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// parseInterspersed parses flags that may appear before, between or after
// positional arguments ("send bob hi", "signup alice --password x"). An
// argument "--" ends flag parsing: everything after it is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func printUsage(w io.Writer, global *flag.FlagSet) {
	fmt.Fprint(w, `chatctl is a command-line client for chatd.

Usage:
  chatctl [global flags] COMMAND [ARGS] [FLAGS]

Global flags (before COMMAND):
`)
	printFlags(w, global)
	fmt.Fprint(w, "\nCommands:\n")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name)+1+len(c.args))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "  %-*s  %s\n", width, strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	fmt.Fprint(w, `
Run 'chatctl help COMMAND' (or 'chatctl COMMAND --help') for a command's flags.
Flags of a command may come before or after its arguments; '--' ends flags.

Environment: CHATCTL_SERVER, CHATCTL_CONFIG_DIR (defaults of --server and
--config-dir), CHATCTL_PASSWORD (default of --password).

Errors are printed as "chatctl: <gRPC code>: <message>" with exit status 1;
usage errors exit with status 2.
`)
}

func printFlags(w io.Writer, fs *flag.FlagSet) {
	var lines []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "h" || f.Name == "help" {
			return
		}
		name, usage := flag.UnquoteUsage(f)
		s := "  --" + f.Name
		if name != "" {
			s += " " + name
		}
		s += "\n      " + usage
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && !strings.Contains(usage, "(default") {
			s += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		lines = append(lines, s)
	})
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

func printCommandHelp(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: chatctl [global flags] %s\n\n%s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	if c.detail != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.detail))
	}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.setup(fs)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		printFlags(w, fs)
	}
	fmt.Fprint(w, "\nRun 'chatctl help' for the global flags.\n")
}

func runHelp(stdout, stderr io.Writer, global *flag.FlagSet, args []string) int {
	if len(args) == 0 {
		printUsage(stdout, global)
		return 0
	}
	c, rest := lookup(args)
	if c == nil || len(rest) > 0 {
		fmt.Fprintf(stderr, "chatctl help: unknown command %q\n", strings.Join(args, " "))
		return 2
	}
	printCommandHelp(stdout, c)
	return 0
}
