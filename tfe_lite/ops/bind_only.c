/* Listening on one address only: a bind() wrapper for `tfe-lite serve` and the driver.

TensorFlow's gRPC server asks for the wildcard address at its port (every interface), with no option to
name one. Preloaded into a player's process (LD_PRELOAD, set by `tfe-lite serve` before TensorFlow
starts), this library rewrites exactly that request: a bind() of the wildcard address (0.0.0.0, or ::
for the dual-stack IPv6 socket gRPC prefers) at the port named by the environment variable
TFE_LITE_BIND_ONLY ("ADDRESS PORT", a numeric IPv4 or IPv6 address) binds ADDRESS instead (an IPv4
address on an IPv6 socket as its v4-mapped form). Every other bind() passes through unchanged. The
variable is read at each call, so a process may set it just before it starts its server.

A request the wrapper cannot honour (an IPv6 address for an IPv4 socket) fails with EADDRNOTAVAIL
instead of falling back to the wildcard; the caller then checks the listening sockets (/proc/net) and
refuses to serve if any listens on every interface.
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef TFE_LITE_BIND_SHA256
#define TFE_LITE_BIND_SHA256 "unknown"
#endif

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

/* The SHA-256 of this source as compiled in: the loader refuses a library built from other source. */
__attribute__((visibility("default"))) const char *tfe_lite_bind_only_source_sha256(void) {
  return TFE_LITE_BIND_SHA256;
}

/* The address and port of TFE_LITE_BIND_ONLY: 4 or 6 (the family of the address), 0 when unset or malformed. */
static int wanted(struct in_addr *v4, struct in6_addr *v6, unsigned *port) {
  const char *spec = getenv("TFE_LITE_BIND_ONLY");
  char host[INET6_ADDRSTRLEN + 1];
  char tail;
  if (spec == NULL || sscanf(spec, "%46s %u%c", host, port, &tail) != 2 || *port == 0 || *port > 65535) return 0;
  if (inet_pton(AF_INET, host, v4) == 1) return 4;
  if (inet_pton(AF_INET6, host, v6) == 1) return 6;
  return 0;
}

__attribute__((visibility("default"))) int bind(int fd, const struct sockaddr *address, socklen_t length) {
  static bind_function next_bind = NULL;
  if (next_bind == NULL) next_bind = (bind_function)dlsym(RTLD_NEXT, "bind");
  if (next_bind == NULL) {
    errno = ENOSYS;
    return -1;
  }
  struct in_addr v4;
  struct in6_addr v6;
  unsigned port;
  int family = address == NULL ? 0 : wanted(&v4, &v6, &port);
  if (family != 0 && address->sa_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in only;
    memcpy(&only, address, sizeof only);
    if (only.sin_addr.s_addr != htonl(INADDR_ANY) || ntohs(only.sin_port) != port) return next_bind(fd, address, length);
    if (family != 4) {
      errno = EADDRNOTAVAIL;
      return -1;
    }
    only.sin_addr = v4;
    return next_bind(fd, (const struct sockaddr *)&only, sizeof only);
  }
  if (family != 0 && address->sa_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 only;
    memcpy(&only, address, sizeof only);
    if (memcmp(&only.sin6_addr, &in6addr_any, sizeof only.sin6_addr) != 0 || ntohs(only.sin6_port) != port) {
      return next_bind(fd, address, length);
    }
    if (family == 6) {
      only.sin6_addr = v6;
    } else { /* ::ffff:a.b.c.d, reached by IPv4 clients of a dual-stack socket */
      memset(&only.sin6_addr, 0, sizeof only.sin6_addr);
      only.sin6_addr.s6_addr[10] = 0xff;
      only.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&only.sin6_addr.s6_addr[12], &v4, sizeof v4);
    }
    return next_bind(fd, (const struct sockaddr *)&only, sizeof only);
  }
  return next_bind(fd, address, length);
}
