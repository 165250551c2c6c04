package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc/metadata"
)

// runGroup: --groups groups of --group-size members (disjoint users), each
// member with --devices devices; each message goes from a random device to
// its group, so it fans out to group-size x devices deliveries (the
// sender's own devices included). The groups are created for this run.
func runGroup(ctx context.Context, b *bench) (*Report, error) {
	c := b.cfg
	rep := b.newReport()
	users := c.groups * c.groupSize
	rep.Workload = map[string]any{"groups": c.groups, "group_size": c.groupSize, "devices": c.devices, "rate": c.rate, "duration": c.duration.String(), "size": c.size, "ack_interval": c.ackInterval.String(), "ack_aligned": c.ackAligned, "ack_reply": c.ackReply}
	if c.rate == 0 {
		rep.Workload["window"] = c.window
	}
	toks, err := b.ensureTokens(ctx, users, c.devices)
	if err != nil {
		return rep, err
	}
	devs, err := b.makeDevices(toks, users, c.devices)
	if err != nil {
		return rep, err
	}
	for _, d := range devs {
		d.fanout = uint64(c.groupSize * c.devices)
	}
	var channels []string
	pick := func(d *device, _ *rand.Rand) *chatv1.SendMessage {
		return &chatv1.SendMessage{Target: &chatv1.SendMessage_ChannelId{ChannelId: channels[d.user/c.groupSize]}}
	}
	// The groups are created once the devices are open (a stale cached
	// token is replaced on open).
	prepare := func(ctx context.Context) error {
		for i := range toks {
			toks[i] = devs[i].tok
		}
		channels, err = b.createGroups(ctx, toks)
		return err
	}
	rep, err = b.runLoad(ctx, rep, loadRun{devs: devs, pick: pick, prepare: prepare})
	rep.Workload["lagged_ticks"] = b.lagged.Load()
	return rep, err
}

// createGroups creates group g of users [g*size, (g+1)*size), owned by its
// first user, and returns the channel ids.
func (b *bench) createGroups(ctx context.Context, toks []cachedToken) ([]string, error) {
	c := b.cfg
	cc, err := b.unaryConn()
	if err != nil {
		return nil, err
	}
	chat := chatv1.NewChatServiceClient(cc)
	ids := make([]string, c.groups)
	errs := make([]error, c.groups)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for g := range c.groups {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			owner := g * c.groupSize
			members := make([]string, 0, c.groupSize-1)
			for u := owner + 1; u < owner+c.groupSize; u++ {
				members = append(members, b.username(u))
			}
			octx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+toks[owner*c.devices].Token)
			var resp *chatv1.CreateGroupResponse
			errs[g] = retryUnary(octx, func(ctx context.Context) error {
				var err error
				resp, err = chat.CreateGroup(ctx, &chatv1.CreateGroupRequest{Name: fmt.Sprintf("chatbench %s %d", b.runID, g), MemberIds: members})
				return err
			})
			if errs[g] == nil {
				ids[g] = resp.GetChannel().GetChannelId()
			}
		}()
	}
	wg.Wait()
	for g, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("create group %d: %w", g, err)
		}
	}
	return ids, nil
}
