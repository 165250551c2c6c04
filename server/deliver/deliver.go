// Package deliver owns delivery: it turns committed messages into
// per-device Delivery frames.
//
// NewPublisher is the sequencer's publish callback: after a batch is
// durable it routes one Delivery frame per recipient user (carrying that
// user's inbox_seq) to the servers holding the user's devices. Routing is
// a wake-up, at most once; the inbox is the truth.
//
// This package must not import google.golang.org/grpc or its status and
// codes packages. It may use the generated protobuf message types of
// gen/chat/v1 for the frames it builds.
package deliver
