package main

import (
	"context"
	"encoding/json"
	"time"

	"github.com/chatd/chatd/client"
	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// pushCmds are "push register|show|remove|previews|vapid-key" and "mute",
// "unmute" (docs/push.md).
func (e *env) pushCmd() *cobra.Command {
	return group("push", "register this device's push target, show or remove it; message previews",
		e.pushRegisterCmd(), e.pushShowCmd(), e.pushRemoveCmd(), e.pushPreviewsCmd(), e.pushVapidKeyCmd())
}

func (e *env) printTarget(t *chatv1.PushTarget) {
	switch {
	case t.GetWebPush() != nil:
		e.printf("webpush  %s\n", clean(t.GetWebPush().GetEndpoint()))
	case t.GetFcm() != nil:
		e.printf("fcm  %s\n", clean(t.GetFcm().GetToken()))
	case t.GetApns() != nil:
		env := "production"
		if t.GetApns().GetSandbox() {
			env = "sandbox"
		}
		e.printf("apns  %s  topic %s  %s\n", clean(t.GetApns().GetToken()), clean(t.GetApns().GetTopic()), env)
	default:
		e.printf("no push target\n")
	}
}

func (e *env) pushRegisterCmd() *cobra.Command {
	var webpush, fcmToken, apnsToken, apnsTopic string
	var sandbox bool
	cmd := e.command("register (--webpush-json JSON | --fcm-token T | --apns-token T --apns-topic BUNDLE [--apns-sandbox])",
		"register this device's push target (replacing the one it had)", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			t := &chatv1.PushTarget{}
			switch {
			case webpush != "":
				var sub struct {
					Endpoint string `json:"endpoint"`
					Keys     struct {
						P256dh string `json:"p256dh"`
						Auth   string `json:"auth"`
					} `json:"keys"`
				}
				if err := json.Unmarshal([]byte(webpush), &sub); err != nil {
					return usagef("--webpush-json is not a PushSubscription JSON: %v", err)
				}
				t.Target = &chatv1.PushTarget_WebPush{WebPush: &chatv1.WebPushSubscription{Endpoint: sub.Endpoint,
					Keys: &chatv1.WebPushKeys{P256Dh: sub.Keys.P256dh, Auth: sub.Keys.Auth}}}
			case fcmToken != "":
				t.Target = &chatv1.PushTarget_Fcm{Fcm: &chatv1.FcmTarget{Token: fcmToken}}
			default:
				t.Target = &chatv1.PushTarget_Apns{Apns: &chatv1.ApnsTarget{Token: apnsToken, Topic: apnsTopic, Sandbox: sandbox}}
			}
			resp, err := rpc(ctx, e, c.Account().SetPushTarget, &chatv1.SetPushTargetRequest{Target: t})
			if err != nil {
				return err
			}
			return show(e, resp.GetTarget(), func(t *chatv1.PushTarget) { e.printf("registered "); e.printTarget(t) })
		})
	cmd.Long = `Registers where this device's push notifications go: a browser's Web Push
subscription (the JSON of PushSubscription.toJSON()), an FCM registration
token, or an APNs device token with the app's bundle id as topic. The device
gets a push for a message when none of your devices has an open stream and
the channel is not muted (docs/push.md). With --json: the PushTarget.`
	cmd.Flags().StringVar(&webpush, "webpush-json", "", "a Web Push subscription as `JSON` ({\"endpoint\":…,\"keys\":{\"p256dh\":…,\"auth\":…}})")
	cmd.Flags().StringVar(&fcmToken, "fcm-token", "", "an FCM registration `TOKEN`")
	cmd.Flags().StringVar(&apnsToken, "apns-token", "", "an APNs device `TOKEN` (hex)")
	cmd.Flags().StringVar(&apnsTopic, "apns-topic", "", "the app's bundle id (apns-topic), with --apns-token")
	cmd.Flags().BoolVar(&sandbox, "apns-sandbox", false, "the APNs token is from a development build")
	cmd.MarkFlagsOneRequired("webpush-json", "fcm-token", "apns-token")
	cmd.MarkFlagsMutuallyExclusive("webpush-json", "fcm-token", "apns-token")
	cmd.MarkFlagsRequiredTogether("apns-token", "apns-topic")
	return cmd
}

func (e *env) pushShowCmd() *cobra.Command {
	return e.command("show", "show this device's push target", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Account().GetPushTarget, &chatv1.GetPushTargetRequest{})
			if err != nil {
				return err
			}
			return show(e, resp, func(r *chatv1.GetPushTargetResponse) { e.printTarget(r.GetTarget()) })
		})
}

func (e *env) pushRemoveCmd() *cobra.Command {
	return e.command("remove", "remove this device's push target", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			if _, err := rpc(ctx, e, c.Account().DeletePushTarget, &chatv1.DeletePushTargetRequest{}); err != nil {
				return err
			}
			return e.report(map[string]any{"removed": true}, "push target removed\n")
		})
}

func (e *env) pushPreviewsCmd() *cobra.Command {
	return e.command("previews on|off", "turn message previews in your pushes on or off (off: no text leaves the server)", exactly("on|off"),
		func(ctx context.Context, c *client.Client, args []string) error {
			if args[0] != "on" && args[0] != "off" {
				return usagef("want on or off, got %q", args[0])
			}
			resp, err := rpc(ctx, e, c.Account().UpdateProfile, &chatv1.UpdateProfileRequest{PushPreviews: proto.Bool(args[0] == "on")})
			if err != nil {
				return err
			}
			return show(e, resp.GetProfile(), func(p *chatv1.Profile) {
				state := "off"
				if p.GetPushPreviews() {
					state = "on"
				}
				e.printf("push previews %s\n", state)
			})
		})
}

func (e *env) pushVapidKeyCmd() *cobra.Command {
	return e.command("vapid-key", "print the server's VAPID public key (a browser's applicationServerKey)", exactly(),
		func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := rpc(ctx, e, c.Account().GetVapidPublicKey, &chatv1.GetVapidPublicKeyRequest{})
			if err != nil {
				return err
			}
			return show(e, resp, func(r *chatv1.GetVapidPublicKeyResponse) { e.printf("%s\n", clean(r.GetPublicKey())) })
		})
}

func (e *env) muteCmd() *cobra.Command {
	var dur time.Duration
	var until string
	var cmd *cobra.Command
	cmd = e.command("mute TARGET [--for DURATION | --until TIME]", "mute a channel: no push notifications for it (it still counts unread)", exactly("TARGET"),
		func(ctx context.Context, c *client.Client, args []string) error {
			var end time.Time
			switch {
			case cmd.Flags().Changed("for"):
				if dur <= 0 {
					return usagef("--for wants a positive duration (e.g. 8h), not %v; without --for the mute lasts until 'chatctl unmute'", dur)
				}
				end = time.Now().Add(dur)
			case until != "":
				t, err := time.Parse(time.RFC3339, until)
				if err != nil {
					return usagef("--until wants an RFC 3339 time (2030-01-02T15:04:05Z): %v", err)
				}
				if !t.After(time.Now()) {
					return usagef("--until %s is not in the future", until)
				}
				end = t
			}
			ch, err := e.resolveChannel(ctx, c, args[0])
			if err != nil {
				return err
			}
			req := &chatv1.MuteChannelRequest{ChannelId: ch}
			if !end.IsZero() {
				req.Until = timestamppb.New(end)
			}
			resp, err := rpc(ctx, e, c.Chat().MuteChannel, req)
			if err != nil {
				return err
			}
			return show(e, resp, func(r *chatv1.MuteChannelResponse) {
				if r.GetUntil() == nil {
					e.printf("muted %s forever\n", clean(ch))
				} else {
					e.printf("muted %s until %s\n", clean(ch), r.GetUntil().AsTime().Local().Format(time.RFC3339))
				}
			})
		})
	cmd.Long = `TARGET is a channel id or a username (the direct channel with that user).
Without --for or --until the mute lasts until 'chatctl unmute'.`
	cmd.Flags().DurationVar(&dur, "for", 0, "mute for this long (e.g. 8h)")
	cmd.Flags().StringVar(&until, "until", "", "mute until this RFC 3339 `TIME`")
	cmd.MarkFlagsMutuallyExclusive("for", "until")
	return cmd
}

func (e *env) unmuteCmd() *cobra.Command {
	return e.command("unmute TARGET", "end the mute of a channel", exactly("TARGET"),
		func(ctx context.Context, c *client.Client, args []string) error {
			ch, err := e.resolveChannel(ctx, c, args[0])
			if err != nil {
				return err
			}
			if _, err := rpc(ctx, e, c.Chat().UnmuteChannel, &chatv1.UnmuteChannelRequest{ChannelId: ch}); err != nil {
				return err
			}
			return e.report(map[string]any{"unmuted": ch}, "unmuted %s\n", clean(ch))
		})
}
