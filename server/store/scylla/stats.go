package scylla

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gocql/gocql"
	"github.com/prometheus/client_golang/prometheus"
)

// stmtStats counts the CQL requests the store sends (every attempt,
// retries included) by statement: a plain statement counts once as a
// request and once as a statement; an unlogged batch counts once as a
// request and once per statement in it. It is the driver's QueryObserver
// and BatchObserver: one map lookup and two atomic adds per request.
type stmtStats struct {
	m sync.Map // statement text -> *stmtCounter
}

type stmtCounter struct {
	label      string
	requests   atomic.Uint64 // requests whose (first) statement is this one
	statements atomic.Uint64 // statements executed, in batches or alone
}

func (s *stmtStats) counter(stmt string) *stmtCounter {
	if c, ok := s.m.Load(stmt); ok {
		return c.(*stmtCounter)
	}
	c, _ := s.m.LoadOrStore(stmt, &stmtCounter{label: stmtLabel(stmt)})
	return c.(*stmtCounter)
}

// ObserveQuery implements gocql.QueryObserver.
func (s *stmtStats) ObserveQuery(_ context.Context, q gocql.ObservedQuery) {
	c := s.counter(q.Statement)
	c.requests.Add(1)
	c.statements.Add(1)
}

// ObserveBatch implements gocql.BatchObserver.
func (s *stmtStats) ObserveBatch(_ context.Context, b gocql.ObservedBatch) {
	for i, st := range b.Statements {
		c := s.counter(st)
		if i == 0 {
			c.requests.Add(1)
		}
		c.statements.Add(1)
	}
}

// stmtLabel names a statement for a metric label: its verb and table,
// "+lwt" for a lightweight transaction ("INSERT messages",
// "SELECT inbox", "UPDATE devices", "INSERT users+lwt").
func stmtLabel(stmt string) string {
	f := strings.Fields(stmt)
	if len(f) == 0 {
		return "?"
	}
	verb := strings.ToUpper(f[0])
	table := "?"
	for i := 0; i < len(f)-1; i++ {
		w := strings.ToUpper(f[i])
		if (verb == "UPDATE" && i == 0) || w == "INTO" || w == "FROM" {
			table = f[i+1]
			break
		}
	}
	table = strings.TrimRight(table, "(;")
	label := verb + " " + table
	up := " " + strings.ToUpper(stmt) + " "
	if strings.Contains(up, " IF NOT EXISTS ") || strings.Contains(up, " IF EXISTS ") || (verb != "SELECT" && strings.Contains(up, " IF ")) {
		label += "+lwt"
	}
	return label
}

// StatementCounts returns, per statement label (stmtLabel), the requests
// and statements sent since Open (see stmtStats).
func (s *Store) StatementCounts() (requests, statements map[string]uint64) {
	requests, statements = map[string]uint64{}, map[string]uint64{}
	s.stats.m.Range(func(_, v any) bool {
		c := v.(*stmtCounter)
		requests[c.label] += c.requests.Load()
		statements[c.label] += c.statements.Load()
		return true
	})
	return requests, statements
}

// RegisterMetrics adds chatd_cql_requests_total{statement} and
// chatd_cql_statements_total{statement} to reg (requests sent to the CQL
// cluster, and statements in them: a batch is one request of several
// statements). Registering twice is harmless.
func (s *Store) RegisterMetrics(reg prometheus.Registerer) error {
	err := reg.Register(&stmtCollector{s: s})
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		return nil
	}
	return err
}

var (
	descCQLRequests   = prometheus.NewDesc("chatd_cql_requests_total", "CQL requests sent (every attempt; a batch is one request), by its first statement's verb and table.", []string{"statement"}, nil)
	descCQLStatements = prometheus.NewDesc("chatd_cql_statements_total", "CQL statements executed (alone or in batches), by verb and table.", []string{"statement"}, nil)
)

type stmtCollector struct{ s *Store }

func (c *stmtCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCQLRequests
	ch <- descCQLStatements
}

func (c *stmtCollector) Collect(ch chan<- prometheus.Metric) {
	req, st := c.s.StatementCounts()
	for l, v := range req {
		if v > 0 {
			ch <- prometheus.MustNewConstMetric(descCQLRequests, prometheus.CounterValue, float64(v), l)
		}
	}
	for l, v := range st {
		ch <- prometheus.MustNewConstMetric(descCQLStatements, prometheus.CounterValue, float64(v), l)
	}
}
