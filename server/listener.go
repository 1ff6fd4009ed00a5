package server

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// ConnLimiter is a net.Listener that bounds the connections open at once,
// in all and per client IP address, so that clients that open connections
// and stall cannot use up the process's file descriptors, nor one client
// crowd out the others. A connection over a limit is closed as soon as it
// is accepted: its client sees the connection end at once instead of
// waiting in the kernel's backlog.
type ConnLimiter struct {
	net.Listener
	max, perIP int // 0: no limit

	mu   sync.Mutex
	open int
	byIP map[netip.Addr]int

	refusedTotal, refusedPerIP atomic.Uint64
}

// LimitConnections wraps ln. max bounds all connections and perIP those of
// one client address; 0 turns a limit off.
func LimitConnections(ln net.Listener, max, perIP int) *ConnLimiter {
	return &ConnLimiter{Listener: ln, max: max, perIP: perIP, byIP: map[netip.Addr]int{}}
}

// Accept returns the next connection within the limits, closing those over
// them.
func (l *ConnLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerIP(c.RemoteAddr().String())
		if l.take(ip) {
			return &limitedConn{Conn: c, l: l, ip: ip}, nil
		}
		c.Close()
	}
}

// take counts a new connection from ip, or reports false (and counts the
// refusal) when a limit is reached.
func (l *ConnLimiter) take(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.max > 0 && l.open >= l.max:
		l.refusedTotal.Add(1)
		return false
	case l.perIP > 0 && l.byIP[ip] >= l.perIP:
		l.refusedPerIP.Add(1)
		return false
	}
	l.open++
	l.byIP[ip]++
	return true
}

func (l *ConnLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byIP[ip]--; l.byIP[ip] == 0 {
		delete(l.byIP, ip)
	}
}

// Open is the number of connections open.
func (l *ConnLimiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Refused returns the connections closed at accept: over the total limit
// and over the per-IP limit.
func (l *ConnLimiter) Refused() (total, perIP uint64) {
	return l.refusedTotal.Load(), l.refusedPerIP.Load()
}

// limitedConn gives its slot back when it is closed (once, however often
// Close is called).
type limitedConn struct {
	net.Conn
	l    *ConnLimiter
	ip   netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c.ip) })
	return c.Conn.Close()
}

// peerIP is the IP address of a "host:port" peer address (IPv4-mapped IPv6
// addresses as IPv4); the zero Addr when it has none.
func peerIP(addr string) netip.Addr {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
