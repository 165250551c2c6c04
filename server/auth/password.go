package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters used for new hashes: the OWASP / RFC 9106 second
// recommended option (19 MiB of memory, 2 passes, 1 lane), a 16-byte salt
// and a 32-byte tag.
const (
	argonMemoryKiB = 19456
	argonTime      = 2
	argonThreads   = 1
	argonSaltLen   = 16
	argonKeyLen    = 32
)

// Limits accepted when verifying a stored hash, so that a corrupted or
// hostile hash string cannot make verification allocate gigabytes.
const (
	maxMemoryKiB = 1 << 20 // 1 GiB
	maxTime      = 16
	maxKeyLen    = 128
	maxSaltLen   = 64
)

// hashSem bounds the number of argon2id computations running at once (each
// holds argonMemoryKiB of memory), so that a sign-up or log-in flood queues
// instead of exhausting memory.
var hashSem = make(chan struct{}, 2*runtime.GOMAXPROCS(0))

// ErrMalformedHash is returned by CheckPassword for a hash that is not a
// well-formed argon2id PHC string within the accepted parameter limits.
var ErrMalformedHash = errors.New("auth: malformed password hash")

var b64 = base64.RawStdEncoding // PHC strings use unpadded standard base64

// HashPassword hashes password with argon2id and returns the PHC string
// "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>" (base64 without padding,
// 16-byte random salt). It blocks while 2*GOMAXPROCS other hashes are being
// computed. The caller bounds the password length (account allows 8..1024
// bytes). The only error is a failure of crypto/rand.
func HashPassword(password string) ([]byte, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("auth: salt: %w", err)
	}
	hashSem <- struct{}{}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemoryKiB, argonThreads, argonKeyLen)
	<-hashSem
	s := fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemoryKiB, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key))
	return []byte(s), nil
}

// CheckPassword reports whether password matches hash, a PHC string as
// HashPassword returns; the parameters (m, t, p, salt and tag length) are
// read from the string, so hashes made with other parameters still verify.
// The tag comparison is constant-time. It returns ErrMalformedHash for an
// unparsable hash or parameters beyond sane limits (m > 1 GiB, t > 16).
func CheckPassword(hash []byte, password string) (bool, error) {
	p, err := parsePHC(string(hash))
	if err != nil {
		return false, err
	}
	hashSem <- struct{}{}
	key := argon2.IDKey([]byte(password), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	<-hashSem
	return subtle.ConstantTimeCompare(key, p.key) == 1, nil
}

type phcParams struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

func parsePHC(s string) (phcParams, error) {
	var p phcParams
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return p, ErrMalformedHash
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, ErrMalformedHash
	}
	var haveM, haveT, haveP bool
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, ErrMalformedHash
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return p, ErrMalformedHash
		}
		switch k {
		case "m":
			p.memory, haveM = uint32(n), true
		case "t":
			p.time, haveT = uint32(n), true
		case "p":
			if n > 255 {
				return p, ErrMalformedHash
			}
			p.threads, haveP = uint8(n), true
		default:
			return p, ErrMalformedHash
		}
	}
	if !haveM || !haveT || !haveP || p.time < 1 || p.time > maxTime ||
		p.threads < 1 || p.memory < 8*uint32(p.threads) || p.memory > maxMemoryKiB {
		return p, ErrMalformedHash
	}
	var err error
	if p.salt, err = b64.DecodeString(parts[4]); err != nil || len(p.salt) < 8 || len(p.salt) > maxSaltLen {
		return p, ErrMalformedHash
	}
	if p.key, err = b64.DecodeString(parts[5]); err != nil || len(p.key) < 16 || len(p.key) > maxKeyLen {
		return p, ErrMalformedHash
	}
	return p, nil
}
