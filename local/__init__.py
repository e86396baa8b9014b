"""The embedded local stack: moto's server for AWS and a stand-in for Vital's API.

Both run in background threads on 127.0.0.1 with OS-assigned ports, so the demo and the
integration tests reach them over real sockets. Import the pieces from their modules
(`local.standin`, `local.moto_server`); this package imports nothing on its own so that
using one half does not pay for the other.
"""
