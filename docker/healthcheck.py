"""Container health check of the coordinator image: the SuperLink answers ``/health`` over HTTPS.

Exit 0 when ``GET FEDLEGO_HEALTH_URL`` (default ``https://127.0.0.1:9092/health``) answers 200 with
a certificate that verifies against ``FEDLEGO_HEALTH_CA`` (default ``/certs/superlink/ca.pem``, the
consortium CA of ``fedlego certs``), 1 otherwise. Standard library only; nothing leaves the container.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "https://127.0.0.1:9092/health"
DEFAULT_CA = "/certs/superlink/ca.pem"


def healthy(url: str, ca: str, timeout: float = 5.0) -> bool:
    """Whether ``url`` answers 200 over TLS verified with the CA file ``ca``."""
    try:
        context = ssl.create_default_context(cafile=ca)
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status == 200
    except (OSError, ssl.SSLError, urllib.error.URLError, ValueError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return False


def main() -> int:
    """Check the URL and CA from the environment (or their defaults)."""
    url = os.environ.get("FEDLEGO_HEALTH_URL", DEFAULT_URL)
    ca = os.environ.get("FEDLEGO_HEALTH_CA", DEFAULT_CA)
    return 0 if healthy(url, ca) else 1


if __name__ == "__main__":
    sys.exit(main())
