package chat

import (
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatd/chatd/server/hub"
	"github.com/chatd/chatd/server/sequence"
)

// Metrics are the chat core's Prometheus metrics (namespace "chatd").
type Metrics struct {
	// MessagesAccepted counts sends stored (duplicates excluded).
	MessagesAccepted prometheus.Counter
	// Duplicates counts sends answered with the original ack.
	Duplicates prometheus.Counter
	// DeliveriesSent counts Delivery frames pushed on streams (live and
	// gap fills; sync pages are counted by DeliveriesSynced).
	DeliveriesSent prometheus.Counter
	// DeliveriesSynced counts deliveries returned in sync pages.
	DeliveriesSynced prometheus.Counter
	// SyncPages counts SyncPage frames sent.
	SyncPages prometheus.Counter
	// Frames counts client frames by type: send, ack, sync, typing,
	// heartbeat, mark_read, edit, delete, empty, malformed, rate_limited.
	Frames *prometheus.CounterVec
	// FrameErrors counts FrameError replies by gRPC code name.
	FrameErrors *prometheus.CounterVec
	// StreamsOpen is the number of open Chat streams on this server.
	StreamsOpen prometheus.Gauge
	// WriteStalls counts connections closed because a stream's writer
	// stayed blocked on a client that does not read after its session
	// closed (Config.CloseConn).
	WriteStalls prometheus.Counter
	// SendLatency is the time from submitting a send to its ack being
	// queued (validation excluded), in seconds.
	SendLatency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, seq *sequence.Sequencer, h *hub.Hub, log *slog.Logger) *Metrics {
	m := &Metrics{
		MessagesAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chatd", Name: "messages_accepted_total", Help: "Messages stored (duplicates excluded).",
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chatd", Name: "messages_duplicate_total", Help: "Sends answered with the original ack (same client_message_id).",
		}),
		DeliveriesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chatd", Name: "deliveries_sent_total", Help: "Delivery frames pushed on Chat streams.",
		}),
		DeliveriesSynced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chatd", Name: "deliveries_synced_total", Help: "Deliveries returned in sync pages.",
		}),
		SyncPages: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chatd", Name: "sync_pages_total", Help: "SyncPage frames sent.",
		}),
		Frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chatd", Name: "client_frames_total", Help: "Client frames received, by type.",
		}, []string{"type"}),
		FrameErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chatd", Name: "frame_errors_total", Help: "FrameError replies, by gRPC code.",
		}, []string{"code"}),
		StreamsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "chatd", Name: "streams_open", Help: "Open Chat streams on this server.",
		}),
		WriteStalls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chatd", Name: "write_stalls_total", Help: "Connections closed because a stream's writer stayed blocked on a client that does not read after its session closed.",
		}),
		SendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "chatd", Name: "send_latency_seconds", Help: "Time from submitting a send to its ack (group commit included).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
	}
	if reg == nil {
		return m
	}
	cs := []prometheus.Collector{
		m.MessagesAccepted, m.Duplicates, m.DeliveriesSent, m.DeliveriesSynced, m.SyncPages,
		m.Frames, m.FrameErrors, m.StreamsOpen, m.WriteStalls, m.SendLatency,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "chatd", Name: "send_queue_overflows_total", Help: "Streams closed because their send queue overflowed.",
		}, func() float64 { return float64(h.Overflows()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "chatd", Name: "hub_sessions", Help: "Device sessions connected to this server.",
		}, func() float64 { return float64(h.Count()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "chatd", Name: "sequencer_batches_total", Help: "Group commits (AppendBatch calls that succeeded).",
		}, func() float64 { return float64(seq.Stats().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "chatd", Name: "sequencer_messages_total", Help: "Messages committed by the sequencer (messages/batches = mean batch size).",
		}, func() float64 { return float64(seq.Stats().Messages) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "chatd", Name: "sequencer_failed_total", Help: "Requests failed by the sequencer (storage errors, shutdown).",
		}, func() float64 { return float64(seq.Stats().Failed) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "chatd", Name: "sequencer_queue_length", Help: "Requests waiting in the sequencer queue.",
		}, func() float64 { return float64(seq.Stats().Queued) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				log.Warn("chat: registering metric failed", "err", err)
			}
		}
	}
	return m
}
