// Command chatctl is a command-line client for chatd.
//
// Usage:
//
//	chatctl [global flags] COMMAND [ARGS] [FLAGS]
//
// Run "chatctl help" for the list of commands and "chatctl help COMMAND" for
// one command's arguments and flags. The commands are spf13/cobra commands
// (commands.go); the global flags (--server, --config-dir, --json,
// --timeout) may come before or after COMMAND. The logged-in device session
// is stored in the config dir (--config-dir), so two users can be driven
// from one shell with two config dirs:
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
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/chatd/chatd/client"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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

// errReported is a usage error whose message is already printed.
var errReported = &usageError{}

// callError is a failure of a command that got to run (exit status 1).
// Every other error of a run is cobra's (an unknown command or flag, a bad
// argument count, conflicting flags) or a usageError: exit status 2.
type callError struct{ err error }

func (e *callError) Error() string { return e.err.Error() }

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

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	root := e.rootCommand()
	root.SetArgs(append([]string{}, singleDashLongFlags(root, args)...))
	cmd, err := root.ExecuteContextC(context.Background())
	if e.client != nil {
		e.client.Close()
	}
	var ce *callError
	switch {
	case err == nil:
		return 0
	case err == errReported:
		return 2
	case errors.As(err, &ce):
		st := toStatus(ce.err)
		fmt.Fprintf(stderr, "chatctl: %s: %s\n", st.Code(), st.Message())
		return 1
	case cmd == nil || cmd == root:
		fmt.Fprintf(stderr, "chatctl: %v\nRun 'chatctl help' for usage.\n", err)
		return 2
	}
	name, help := commandName(cmd), "help "+commandName(cmd)
	if cmd.Name() == "help" {
		help = "help"
	}
	fmt.Fprintf(stderr, "chatctl %s: %v\nRun 'chatctl %s' for usage.\n", name, err, help)
	return 2
}

// rootCommand is chatctl with its global flags and every command.
func (e *env) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "chatctl",
		Short: "chatctl is a command-line client for chatd.",
		// With no command: the usage on stderr, status 2. A first word that
		// is no command lands here too.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				printUsage(e.stderr, cmd)
				return errReported
			}
			return usagef("unknown command %q", strings.Join(args[:min(2, len(args))], " "))
		},
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{msg: err.Error()} })
	root.SetHelpFunc(func(cmd *cobra.Command, _ []string) { printHelp(cmd.OutOrStdout(), cmd) })
	root.SetHelpCommand(helpCommand())

	fs := root.PersistentFlags()
	fs.StringVar(&e.server, "server", "", "chat server `HOST:PORT` (default $CHATCTL_SERVER, else the server stored at login, else "+defaultServer+")")
	fs.StringVar(&e.configDir, "config-dir", "", "`DIR` holding the logged-in credentials (default $CHATCTL_CONFIG_DIR, else "+defaultConfigDirDoc()+")")
	fs.BoolVar(&e.json, "json", false, "print JSON Lines (one protojson object per line) instead of text")
	fs.DurationVar(&e.timeout, "timeout", 10*time.Second, "timeout of each unary call and of connecting the Chat stream")

	cobra.EnableCommandSorting = false // help lists the commands in definition order
	root.AddCommand(e.commands()...)
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Use = "completion SHELL"
			c.Short = "print the shell completion script (bash, zsh, fish or powershell)"
			c.Annotations = map[string]string{listingKey: listSingle}
		}
	}
	return root
}

// resolve fills in the defaults of the global flags that come from the
// environment, after the command line is parsed.
func (e *env) resolve(cmd *cobra.Command) error {
	fs := cmd.Flags()
	if !fs.Changed("server") {
		e.server = os.Getenv("CHATCTL_SERVER")
	}
	e.serverExplicit = e.server != ""
	if !fs.Changed("config-dir") {
		e.configDir = os.Getenv("CHATCTL_CONFIG_DIR")
	}
	if e.configDir == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			return usagef("no config dir: %v (use --config-dir)", err)
		}
		e.configDir = filepath.Join(dir, "chatctl")
	}
	return nil
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

// singleDashLongFlags rewrites "-json" as "--json" (and "-server=X" as
// "--server=X") for every long flag chatctl defines: the Go flag package
// that chatctl used before cobra accepted both spellings. Arguments after
// "--" and the values of flags are left alone.
func singleDashLongFlags(root *cobra.Command, args []string) []string {
	takesValue := map[string]bool{}
	var collect func(*cobra.Command)
	collect = func(c *cobra.Command) {
		add := func(f *pflag.Flag) { takesValue[f.Name] = f.NoOptDefVal == "" }
		c.LocalFlags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			collect(sub)
		}
	}
	collect(root)
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(a) > 2 {
			name, _, hasValue := strings.Cut(a[1:], "=")
			if value, ok := takesValue[name]; ok {
				a = "-" + a
				if value && !hasValue && i+1 < len(args) {
					out = append(out, a)
					i++
					a = args[i]
				}
			}
		} else if name, ok := strings.CutPrefix(a, "--"); ok && !strings.Contains(name, "=") && takesValue[name] && i+1 < len(args) {
			out = append(out, a)
			i++
			a = args[i]
		}
		out = append(out, a)
	}
	return out
}
