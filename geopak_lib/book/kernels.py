"""How the book starts its notebook kernels: encrypted local transport, so no plain-text warning.

ipykernel warns "Kernel is running over TCP without encryption" at every start unless the kernel
manager gives it CurveZMQ keys. jupyter_client (8.8 and later) provisions them when its
``transport_encryption`` is "auto" and the kernelspec declares "curve" support (ipykernel's does).
We turn that on rather than hide the warning or switch to IPC sockets: IPC does not exist on
Windows, and a filtered log would hide a real problem. Where pyzmq lacks Curve (libzmq built
without libsodium) or jupyter_client is older, the kernel starts as before and the warning stays.
docs/decisions/site.md.
"""

from __future__ import annotations


def kernel_options() -> dict:
    """Keyword arguments for papermill.execute_notebook: an encrypting kernel manager, or {}."""
    try:
        import zmq
        from jupyter_client.manager import AsyncKernelManager
    except ImportError:
        return {}
    if not zmq.has("curve") or not AsyncKernelManager.class_traits().get("transport_encryption"):
        return {}
    return {"kernel_manager_class": _curve_manager()}


def _curve_manager():
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CurveKernelManager(AsyncKernelManager):
        """AsyncKernelManager that provisions CurveZMQ keys when the kernelspec supports them."""

        @default("transport_encryption")
        def _encrypt_when_supported(self):
            return "auto"

    return CurveKernelManager
