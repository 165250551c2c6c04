package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	chatv1 "github.com/chatd/chatd/gen/chat/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// cachedToken is one device's credentials.
type cachedToken struct {
	Token    string `json:"token"`
	DeviceID string `json:"device_id"`
}

// tokenCache maps "<server>|<username>|<device n>" to a device token. It is
// a JSON file so that a repeated run skips sign-up and log-in (argon2id).
type tokenCache struct {
	path string
	mu   sync.Mutex
	m    map[string]cachedToken
}

type tokenFile struct {
	Version int                    `json:"version"`
	Tokens  map[string]cachedToken `json:"tokens"`
}

func loadTokenCache(path string) (*tokenCache, error) {
	tc := &tokenCache{path: path, m: make(map[string]cachedToken)}
	if path == "" {
		return tc, nil
	}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return tc, nil
	}
	if err != nil {
		return nil, err
	}
	var f tokenFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("token cache %s: %w", path, err)
	}
	if f.Tokens != nil {
		tc.m = f.Tokens
	}
	return tc, nil
}

func (tc *tokenCache) get(key string) (cachedToken, bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	t, ok := tc.m[key]
	return t, ok
}

func (tc *tokenCache) put(key string, t cachedToken) {
	tc.mu.Lock()
	tc.m[key] = t
	tc.mu.Unlock()
}

func (tc *tokenCache) drop(key string) {
	tc.mu.Lock()
	delete(tc.m, key)
	tc.mu.Unlock()
}

// save writes the cache atomically (temp file + rename).
func (tc *tokenCache) save() error {
	if tc.path == "" {
		return nil
	}
	tc.mu.Lock()
	b, err := json.Marshal(tokenFile{Version: 1, Tokens: tc.m})
	tc.mu.Unlock()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(tc.path), ".chatbench-tokens-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), tc.path)
}

// username of user n.
func (b *bench) username(n int) string { return fmt.Sprintf("%s-%06d", b.cfg.userPrefix, n) }

func (b *bench) tokenKey(user, dev int) string {
	return b.cfg.servers[0] + "|" + b.username(user) + "|" + fmt.Sprint(dev)
}

// unaryConn is the connection used for sign-up, log-in and group calls.
func (b *bench) unaryConn() (*grpc.ClientConn, error) {
	b.unaryOnce.Do(func() {
		b.unaryCC, b.unaryErr = grpc.NewClient("passthrough:///"+b.cfg.servers[0],
			grpc.WithTransportCredentials(insecure.NewCredentials()))
	})
	return b.unaryCC, b.unaryErr
}

// retryUnary calls f until it succeeds, fails with a code other than
// ResourceExhausted or Unavailable, or ctx ends. A rate-limited setup (chatd
// run without raised --unary-rate) is slow but completes.
func retryUnary(ctx context.Context, f func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := f(cctx)
		cancel()
		switch status.Code(err) {
		case codes.ResourceExhausted, codes.Unavailable:
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// logIn signs user n up (AlreadyExists is fine: users are reused) unless
// signedUp says it was done in this run, logs device dev in and caches the
// token.
func (b *bench) logIn(ctx context.Context, user, dev int, signUp bool) (cachedToken, error) {
	cc, err := b.unaryConn()
	if err != nil {
		return cachedToken{}, err
	}
	acc := chatv1.NewAccountServiceClient(cc)
	name := b.username(user)
	if signUp {
		err := retryUnary(ctx, func(ctx context.Context) error {
			_, err := acc.SignUp(ctx, &chatv1.SignUpRequest{Username: name, Password: b.cfg.password, DisplayName: name})
			return err
		})
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return cachedToken{}, fmt.Errorf("sign up %s: %w", name, err)
		}
	}
	var resp *chatv1.LogInResponse
	err = retryUnary(ctx, func(ctx context.Context) error {
		var err error
		resp, err = acc.LogIn(ctx, &chatv1.LogInRequest{Username: name, Password: b.cfg.password, DeviceName: fmt.Sprintf("chatbench-%d", dev)})
		return err
	})
	if err != nil {
		return cachedToken{}, fmt.Errorf("log in %s device %d: %w", name, dev, err)
	}
	t := cachedToken{Token: resp.GetAccessToken(), DeviceID: resp.GetDeviceId()}
	b.tokens.put(b.tokenKey(user, dev), t)
	return t, nil
}

// ensureTokens makes sure users [0, users) each have devices tokens,
// signing up and logging in concurrently what the cache lacks, and returns
// them indexed [user*devices+dev].
func (b *bench) ensureTokens(ctx context.Context, users, devices int) ([]cachedToken, error) {
	out := make([]cachedToken, users*devices)
	var missing []int
	for u := 0; u < users; u++ {
		for d := 0; d < devices; d++ {
			if t, ok := b.tokens.get(b.tokenKey(u, d)); ok {
				out[u*devices+d] = t
			} else {
				missing = append(missing, u*devices+d)
			}
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	start := time.Now()
	b.logf("setup: %d of %d device tokens to create (sign-up and log-in, %d at a time)", len(missing), len(out), b.cfg.setupConc)
	var done atomic.Int64
	stop := b.ticker(ctx, func() string {
		return fmt.Sprintf("setup: %d/%d devices logged in (%s)", done.Load(), len(missing), time.Since(start).Round(time.Second))
	})
	defer stop()
	work := make(chan int)
	errc := make(chan error, b.cfg.setupConc)
	var wg sync.WaitGroup
	for range b.cfg.setupConc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				u, d := i/devices, i%devices
				// Sign up once per user: when its first missing device is
				// logged in. AlreadyExists covers users from earlier runs.
				signUp := d == 0 || !b.hasAnyToken(u, d)
				t, err := b.logIn(ctx, u, d, signUp)
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
				out[i] = t
				if done.Add(1)%1000 == 0 {
					_ = b.tokens.save()
				}
			}
		}()
	}
	var ferr error
feed:
	for _, i := range missing {
		select {
		case work <- i:
		case ferr = <-errc:
			break feed
		case <-ctx.Done():
			ferr = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if ferr == nil {
		select {
		case ferr = <-errc:
		default:
		}
	}
	if err := b.tokens.save(); err != nil && ferr == nil {
		ferr = fmt.Errorf("token cache: %w", err)
	}
	if ferr != nil {
		return nil, ferr
	}
	b.logf("setup: %d devices logged in in %s", len(missing), time.Since(start).Round(time.Millisecond))
	return out, nil
}

// hasAnyToken reports whether user u has a cached token for a device below
// d (so it was signed up already).
func (b *bench) hasAnyToken(u, d int) bool {
	for i := 0; i < d; i++ {
		if _, ok := b.tokens.get(b.tokenKey(u, i)); ok {
			return true
		}
	}
	return false
}

func runSetup(ctx context.Context, b *bench) (*Report, error) {
	start := time.Now()
	_, err := b.ensureTokens(ctx, b.cfg.users, b.cfg.devices)
	rep := b.newReport()
	rep.DurationSec = time.Since(start).Seconds()
	rep.Workload = map[string]any{"users": b.cfg.users, "devices": b.cfg.devices}
	return rep, err
}

// isUnauthenticated reports whether err means the cached token is no good
// (a fresh server data directory, a new token key, a revoked device).
func isUnauthenticated(err error) bool {
	return status.Code(err) == codes.Unauthenticated || strings.Contains(err.Error(), "session revoked")
}
