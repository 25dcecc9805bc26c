// Package docker is edgeflow's one door to the Docker engine: Client
// implements containers.Engine, the narrow interface the compose and
// container steps declare, with the Docker SDK (github.com/moby/moby/client).
// No other package imports the SDK.
//
// # Connection
//
// New reads the environment as the docker CLI does (DOCKER_HOST,
// DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, DOCKER_API_VERSION) and negotiates
// the API version with the daemon on its first request, so engines from
// API 1.40 (Docker 19.03) on are supported. Nothing is dialled before the
// first call.
//
// # Errors
//
// Every error is an *onfailure.Error saying what was being done, such as
// "pull example/api:2.3: ...". Its kind is read from the SDK's error types,
// never from message text:
//
//	daemon unreachable (client.IsErrConnectionFailed),
//	errdefs Unavailable                      Connectivity
//	errdefs Unauthorized (login refused)     Authentication
//	errdefs PermissionDenied (403)           Authorization
//	errdefs ResourceExhausted (429)          ResourceExhausted
//	errdefs DeadlineExceeded, a deadline     Timeout
//	errdefs NotFound                         Unknown, wrapping containers.ErrNotFound
//	a local file error (opening an archive)  onfailure.Classify (ENOSPC ...)
//	anything else                            Unknown
//
// When the caller's context ends, the error wraps context.Cause of it
// instead, so that a step's timeout, an operator's mark-as-failed and an
// agent shutdown keep their own meaning. Errors the daemon reports inside a
// progress stream (image load and pull) carry an HTTP status code only
// sometimes; it is mapped the same way when present.
//
// The kind is only as good as the daemon's status code. Docker 20.10
// answers a pull from a registry it cannot reach (DNS, connection
// refused) with 500 Internal Server Error, so such a failure is Unknown
// there, not Connectivity; an unreachable daemon is always Connectivity.
//
// # Clone
//
// Clone recreates a container on another image the way watchtower does: it
// starts from the old container's configuration, host configuration and
// network endpoints, and drops what the container only had because its old
// image had it, found by comparing with the old image's configuration:
// environment entries present in the image's environment, a command,
// entrypoint, health check, working directory, user, stop signal or shell
// equal to the image's, labels with the image's value, and the image's
// exposed ports and volumes. What remains is what the user set, and the new
// image's defaults fill the rest. Published ports stay exposed. A hostname
// that was the old container's short id is dropped so the new container
// gets its own. Anonymous volumes of the old container are mounted into the
// new one by name, as docker compose does when it recreates a container, so
// their data carries over. On engines before API 1.44 a container can be
// created with one network only; the others are connected before Clone
// returns.
package docker
