package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/edgeflow/edgeflow/engine"
	"github.com/edgeflow/edgeflow/onfailure"
)

// ControlSocket is the name of the local control socket in the state dir.
// `apply` and the daemon serve it while they run a flow; `guide`,
// `mark-failed` and `status` talk to it.
const ControlSocket = "control.sock"

// ControlRequest is one request on the control socket (one JSON object per
// connection, answered by one ControlResponse).
type ControlRequest struct {
	// Op is "guide", "mark-failed" or "status".
	Op     string           `json:"op"`
	Action onfailure.Action `json:"action,omitempty"`
	Step   string           `json:"step,omitempty"`
	Note   string           `json:"note,omitempty"`
}

// ControlResponse answers a ControlRequest.
type ControlResponse struct {
	OK     bool           `json:"ok"`
	Error  string         `json:"error,omitempty"`
	Result *engine.Result `json:"result,omitempty"`
}

// controller is what the control socket drives: the running engine.
type controller interface {
	Guide(engine.Guidance) error
	MarkFailed(step, by, note string) error
	Current() *engine.Result
}

// Control serves the control socket.
type Control struct {
	ln   *net.UnixListener
	path string
	eng  controller
	log  *slog.Logger
	wg   sync.WaitGroup
}

// ServeControl listens on the control socket of stateDir. The caller must
// hold the state dir (the journal's lock), so a socket file left by a
// crashed agent is stale and is replaced. Only the socket's owner (root,
// normally) and its group may connect.
func ServeControl(stateDir string, eng controller, log *slog.Logger) (*Control, error) {
	path := filepath.Join(stateDir, ControlSocket)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	c := &Control{ln: ln, path: path, eng: eng, log: log}
	c.wg.Add(1)
	go c.serve()
	return c, nil
}

// Close stops serving and removes the socket.
func (c *Control) Close() error {
	err := c.ln.Close()
	c.wg.Wait()
	_ = os.Remove(c.path)
	return err
}

func (c *Control) serve() {
	defer c.wg.Done()
	for {
		conn, err := c.ln.AcceptUnix()
		if err != nil {
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.handle(conn)
		}()
	}
}

func (c *Control) handle(conn *net.UnixConn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	who := peer(conn)
	var req ControlRequest
	resp := ControlResponse{OK: true}
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
		resp = ControlResponse{Error: "bad request: " + err.Error()}
	} else {
		var err error
		switch req.Op {
		case "guide":
			err = c.eng.Guide(engine.Guidance{Step: req.Step, Action: req.Action, By: who, Note: req.Note})
		case "mark-failed":
			err = c.eng.MarkFailed(req.Step, who, req.Note)
		case "status":
			resp.Result = c.eng.Current()
		default:
			err = fmt.Errorf("unknown op %q", req.Op)
		}
		if err != nil {
			resp = ControlResponse{Error: err.Error()}
		}
		c.log.Info("control request", "op", req.Op, "action", req.Action, "by", who, "ok", err == nil)
	}
	_ = json.NewEncoder(conn).Encode(resp)
}

// peer names the local user on the other end of conn, from the kernel's
// peer credentials.
func peer(conn *net.UnixConn) string {
	raw, err := conn.SyscallConn()
	if err != nil {
		return "unknown"
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return "unknown"
	}
	uid := strconv.Itoa(int(cred.Uid))
	if u, err := user.LookupId(uid); err == nil {
		return fmt.Sprintf("%s (uid %s, local)", u.Username, uid)
	}
	return "uid " + uid + " (local)"
}

// ErrNoAgent says no agent is serving the state dir's control socket.
var ErrNoAgent = errors.New("no flow is running in this state dir (no agent answers on its control socket)")

// Ask sends one request to the agent serving stateDir.
func Ask(ctx context.Context, stateDir string, req ControlRequest) (*ControlResponse, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(stateDir, ControlSocket))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, ErrNoAgent
		}
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	var resp ControlResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if !resp.OK {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}
