"""``edgeslm bundle``: models sealed in one archive, to carry them where no network reaches.

A bundle is a tar: first an index (``layout.Index``: the edgeslm version, each manifest's sha256
and size, each blob's digest and size), then, when signed, an Ed25519 signature of the index
(``signing``), then the manifests and the blobs, each named by what it is. ``create`` streams it
from the store; ``read`` checks it member by member as it streams (names, types, sizes, digests,
nothing unlisted, nothing twice, nothing missing) and ``import_bundle`` publishes only once
everything has been checked.
"""

from __future__ import annotations

from .create import create_bundle
from .read import import_bundle, verify_bundle

__all__ = ["create_bundle", "import_bundle", "verify_bundle"]
