package redis

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// register adds the router's counters to reg as chatd_router_* metrics.
func (r *Router) register(reg prometheus.Registerer) {
	counter := func(name, help string, v func(Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "chatd", Subsystem: "router", Name: name, Help: help},
			func() float64 { return float64(v(r.Stats())) })
	}
	cs := []prometheus.Collector{
		counter("local_events_total", "Events handed to this server's hub by Route without Redis.", func(s Stats) uint64 { return s.LocalEvents }),
		counter("remote_events_total", "Event copies published to other servers.", func(s Stats) uint64 { return s.RemoteEvents }),
		counter("messages_published_total", "Pub/sub messages published (each carries many events).", func(s Stats) uint64 { return s.Messages }),
		counter("messages_unheard_total", "Published messages that no subscriber received.", func(s Stats) uint64 { return s.Unheard }),
		counter("publish_errors_total", "Failed publishes (their events are lost; devices sync).", func(s Stats) uint64 { return s.PublishErrors }),
		counter("lookup_errors_total", "Failed route lookups (their events are lost; devices sync).", func(s Stats) uint64 { return s.LookupErrors }),
		counter("queue_drops_total", "Events not sent to other servers because the publish queue was full.", func(s Stats) uint64 { return s.QueueDrops }),
		counter("encode_errors_total", "Event copies not sent because their frame could not be encoded.", func(s Stats) uint64 { return s.EncodeErrors }),
		counter("received_events_total", "Events received from other servers and handed to the hub.", func(s Stats) uint64 { return s.Received }),
		counter("not_attached_events_total", "Events received for users no longer attached here (dropped).", func(s Stats) uint64 { return s.NotAttached }),
		counter("malformed_messages_total", "Undecodable pub/sub messages received (dropped).", func(s Stats) uint64 { return s.Malformed }),
		counter("resubscribes_total", "Times the subscription was re-established after a break (events published meanwhile are lost).", func(s Stats) uint64 { return s.Resubscribes }),
		counter("routes_refreshed_total", "Route entries re-added by the refresher.", func(s Stats) uint64 { return s.Refreshed }),
		counter("redis_losses_total", "Times this server found its Redis state lost and re-added every route.", func(s Stats) uint64 { return s.Losses }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "chatd", Subsystem: "router", Name: "publish_queue_length", Help: "Events waiting for the publisher."},
			func() float64 {
				r.qmu.Lock()
				n := len(r.pending)
				r.qmu.Unlock()
				return float64(n)
			}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				r.log.Warn("router/redis: registering metric failed", "err", err)
			}
		}
	}
}
