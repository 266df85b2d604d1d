"""Nameko glue of :mod:`shared.signing`: signed RPC entrypoints and signing proxies.

* ``@signed_rpc`` replaces ``@rpc`` on a state-changing method (``names.SIGNED_RPCS``):
  the call is verified before a worker starts; a refused one answers the caller with a
  ``CallerRefused`` RemoteError and never runs. Local calls (the HTTP handlers, behind
  their API key) are plain method calls and are not affected.
* ``SignedRpcProxy(service)`` replaces ``RpcProxy``: every call carries the
  ``x-phoenix-auth`` header, signed with this process's ``security.signing_key``.
* :func:`cluster_proxy` is the standalone ``ClusterRpcProxy`` for the Telegram worker, the
  dashboard, scripts and tests: signing too, and with reply queues named after the caller
  (``rpc.reply-<caller>-<uuid>``) so each broker user reads only its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nameko.extensions import DependencyProvider
from nameko.rpc import MethodProxy, Rpc, RpcProxy, ServiceProxy
from nameko.standalone.rpc import ClusterProxy, ClusterRpcProxy

from shared.names import AUTH_HEADER, SIGNED_RPCS
from shared.settings import get_settings
from shared.signing import CallerRefused, Verifier, keys_of, sign_call

SIGNER_CONFIG_KEY = "PHOENIX_SIGNER"  # (identity, key) in a standalone proxy's config


def _signer(config: Mapping[str, Any]) -> tuple[str, str]:
    given = config.get(SIGNER_CONFIG_KEY)
    if given:
        return str(given[0]), str(given[1])
    sec = get_settings().security
    return sec.signing_identity, sec.signing_key.get_secret_value()


class SignedRpc(Rpc):
    """``@rpc`` that verifies the caller's signature first (see module doc)."""

    def __init__(self, unless: Callable[[Sequence[Any], Mapping[str, Any]], bool] | None = None,
                 **kwargs: Any) -> None:
        self.unless = unless
        super().__init__(**kwargs)

    def setup(self) -> None:
        sec = get_settings().security
        self.verifier = Verifier(self.container.service_name, keys_of(sec.verify_keys),
                                 sec.signature_max_age_s)
        super().setup()

    def handle_message(self, body: Any, message: Any) -> None:
        args = body.get("args", ()) if isinstance(body, dict) else ()
        kwargs = body.get("kwargs", {}) if isinstance(body, dict) else {}
        if self.unless is None or not self.unless(args, kwargs):
            allowed = SIGNED_RPCS.get((self.container.service_name, self.method_name), ())
            # raising here makes nameko's RpcConsumer answer the caller with the error
            self.verifier.verify((message.headers or {}).get(AUTH_HEADER), self.method_name,
                                 args, kwargs, allowed)
        super().handle_message(body, message)


signed_rpc = SignedRpc.decorator


class MessageHeaders(DependencyProvider):
    """The headers of the message a worker handles (nameko keeps them as context data)."""

    def get_dependency(self, worker_ctx: Any) -> dict[str, Any]:
        return dict(worker_ctx.context_data)


class SignedMethodProxy(MethodProxy):
    """A method proxy whose calls carry this process's signature."""

    _auth: str | None = None

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        identity, key = _signer(self.container.config)
        self._auth = sign_call(identity, key, self.service_name, self.method_name, args,
                               kwargs) if key else None
        return super()._call(*args, **kwargs)

    def get_message_headers(self, worker_ctx: Any) -> dict[str, Any]:
        headers: dict[str, Any] = super().get_message_headers(worker_ctx)
        if self._auth:
            headers[AUTH_HEADER] = self._auth
        return headers


class SignedServiceProxy(ServiceProxy):
    def __getattr__(self, name: str) -> SignedMethodProxy:
        return SignedMethodProxy(self.worker_ctx, self.service_name, name,
                                 self.reply_listener, **self.options)


class SignedRpcProxy(RpcProxy):
    """``RpcProxy`` whose calls are signed with ``security.signing_key``."""

    def get_dependency(self, worker_ctx: Any) -> SignedServiceProxy:
        return SignedServiceProxy(worker_ctx, self.target_service, self.rpc_reply_listener,
                                  **self.options)


class _SignedClusterProxy(ClusterProxy):
    def __getattr__(self, name: str) -> SignedServiceProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._proxies:
            self._proxies[name] = SignedServiceProxy(self._worker_ctx, name,
                                                     self._reply_listener)
        return self._proxies[name]


def cluster_proxy(amqp_uri: str, *, caller: str | None = None, key: str | None = None,
                  timeout: float | None = 30.0, ssl: Any = None) -> ClusterRpcProxy:
    """A standalone ``ClusterRpcProxy`` signing as ``caller`` (default: this process's
    ``security.signing_identity`` and key); use as ``with cluster_proxy(uri) as rpc:``."""
    if caller is None or key is None:
        sec = get_settings().security
        caller = caller or sec.signing_identity
        key = key if key is not None else sec.signing_key.get_secret_value()
    config: dict[str, Any] = {"AMQP_URI": amqp_uri, SIGNER_CONFIG_KEY: (caller, key)}
    if ssl:
        config["AMQP_SSL"] = ssl
    proxy = ClusterRpcProxy(config, timeout=timeout)
    container = proxy._worker_ctx.container
    container.service_name = caller or "standalone_rpc_proxy"  # names the reply queue
    proxy._proxy = _SignedClusterProxy(proxy._worker_ctx, proxy._reply_listener)
    return proxy


__all__ = ["CallerRefused", "SignedRpcProxy", "cluster_proxy", "signed_rpc"]
