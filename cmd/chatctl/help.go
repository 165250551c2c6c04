package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The help is generated from the command tree: each command's Use (name
// and argument synopsis), Short, Long and flags. Unlike cobra's default
// template, the command list is flat ("group create NAME ...", not
// "group"), so that one screen shows everything chatctl can do.

// listingKey is the annotation that changes how a command is listed:
// listGroup commands ("group", "contacts") only hold subcommands and are
// not listed themselves; listSingle commands ("completion") are listed
// without their subcommands.
const (
	listingKey = "chatctl-listing"
	listGroup  = "group"
	listSingle = "single"
)

// commandName is cmd's path without "chatctl ": "group add".
func commandName(cmd *cobra.Command) string {
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}

// synopsis is the command's name and argument synopsis: "group add GROUP USER".
func synopsis(cmd *cobra.Command) string {
	_, args, _ := strings.Cut(cmd.Use, " ")
	return strings.TrimSpace(commandName(cmd) + " " + args)
}

// listCommands prints one line per command below cmds (synopsis and
// summary), depth first in definition order.
func listCommands(w io.Writer, cmds []*cobra.Command) {
	type line struct{ syn, short string }
	var lines []line
	var walk func([]*cobra.Command)
	walk = func(cmds []*cobra.Command) {
		for _, c := range cmds {
			if !c.IsAvailableCommand() {
				continue
			}
			if c.Annotations[listingKey] != listGroup {
				lines = append(lines, line{synopsis(c), c.Short})
			}
			if c.Annotations[listingKey] != listSingle {
				walk(c.Commands())
			}
		}
	}
	walk(cmds)
	width := 0
	for _, l := range lines {
		width = max(width, len(l.syn))
	}
	for _, l := range lines {
		fmt.Fprintf(w, "  %-*s  %s\n", width, l.syn, l.short)
	}
}

// flagUsages lists the flags of fs but --help.
func flagUsages(fs *pflag.FlagSet) string {
	out := pflag.NewFlagSet("", pflag.ContinueOnError)
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			out.AddFlag(f)
		}
	})
	return out.FlagUsages()
}

func printUsage(w io.Writer, root *cobra.Command) {
	fmt.Fprintf(w, `%s

Usage:
  chatctl [global flags] COMMAND [ARGS] [FLAGS]

Global flags (before or after COMMAND):
%s
Commands:
`, root.Short, flagUsages(root.PersistentFlags()))
	listCommands(w, root.Commands())
	fmt.Fprint(w, `
Run 'chatctl help COMMAND' (or 'chatctl COMMAND --help') for a command's flags.
Flags may come before or after a command's arguments; '--' ends flags.

Environment: CHATCTL_SERVER, CHATCTL_CONFIG_DIR (defaults of --server and
--config-dir), CHATCTL_PASSWORD (default of --password).

Errors are printed as "chatctl: <gRPC code>: <message>" with exit status 1;
usage errors exit with status 2.
`)
}

// printHelp prints the help of one command (the usage for the root).
func printHelp(w io.Writer, cmd *cobra.Command) {
	if !cmd.HasParent() {
		printUsage(w, cmd)
		return
	}
	fmt.Fprintf(w, "Usage: chatctl [global flags] %s\n\n%s\n", synopsis(cmd), cmd.Short)
	if cmd.Long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.Long))
	}
	if cmd.HasAvailableSubCommands() {
		fmt.Fprint(w, "\nCommands:\n")
		listCommands(w, cmd.Commands())
	}
	if flags := flagUsages(cmd.LocalFlags()); flags != "" {
		fmt.Fprintf(w, "\nFlags:\n%s", flags)
	}
	fmt.Fprint(w, "\nRun 'chatctl help' for the global flags.\n")
}

// helpCommand is "chatctl help [COMMAND]"; unlike cobra's, an unknown
// command is a usage error.
func helpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "show the commands, or one command's arguments and flags",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			target, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 || (target == root && len(args) > 0) {
				return usagef("unknown command %q", strings.Join(args, " "))
			}
			printHelp(cmd.OutOrStdout(), target)
			return nil
		},
	}
}
