package scylla

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"time"

	"github.com/scylladb/gocqlx/v3/migrate"
)

//go:embed migrations/*.cql
var migrationFiles embed.FS

// Migrations returns the embedded, versioned schema files (NNN_name.cql,
// applied in name order).
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // the embedded directory exists at build time
	}
	return sub
}

// Replication strategies accepted by Migrate.
const (
	SimpleStrategy          = "SimpleStrategy"
	NetworkTopologyStrategy = "NetworkTopologyStrategy"
)

// Migrate creates cfg.Keyspace if it does not exist, with the given
// replication (class SimpleStrategy or NetworkTopologyStrategy, factor >=
// 1; NetworkTopologyStrategy applies the factor to every datacenter), and
// applies the pending schema migrations in order, recording each in the
// keyspace's gocqlx_migrate table. Every statement is idempotent (IF NOT
// EXISTS), so a migration interrupted half-way is completed by the next
// run. An existing keyspace keeps its replication.
//
// Run it from one process at a time (e.g. `chatd migrate` or the first
// node's start-up): schema changes are slow (seconds) and concurrent ones
// race on the migration log.
func Migrate(ctx context.Context, cfg Config, replicationClass string, replicationFactor int) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if replicationClass != SimpleStrategy && replicationClass != NetworkTopologyStrategy {
		return fmt.Errorf("scylla store: replication class %q: want %s or %s", replicationClass, SimpleStrategy, NetworkTopologyStrategy)
	}
	if replicationFactor < 1 || replicationFactor > 99 {
		return fmt.Errorf("scylla store: replication factor %d out of range [1, 99]", replicationFactor)
	}
	// Schema statements can take seconds on Cassandra; give them room.
	sys := cfg.cluster("")
	sys.Timeout = max(cfg.Timeout, 30*time.Second)
	sess, err := connect(ctx, sys)
	if err != nil {
		return err
	}
	stmt := fmt.Sprintf("CREATE KEYSPACE IF NOT EXISTS %s WITH replication = {'class': '%s', 'replication_factor': %d}",
		cfg.Keyspace, replicationClass, replicationFactor)
	err = sess.ContextQuery(ctx, stmt, nil).ExecRelease()
	if err == nil {
		err = sess.AwaitSchemaAgreement(ctx)
	}
	sess.Close()
	if err != nil {
		return fmt.Errorf("scylla store: create keyspace %s: %w", cfg.Keyspace, err)
	}

	ks := cfg.cluster(cfg.Keyspace)
	ks.Timeout = sys.Timeout
	sess, err = connect(ctx, ks)
	if err != nil {
		return err
	}
	defer sess.Close()
	if err := migrate.FromFS(ctx, sess, Migrations()); err != nil {
		return fmt.Errorf("scylla store: migrate %s: %w", cfg.Keyspace, err)
	}
	return nil
}
