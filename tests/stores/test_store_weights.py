"""Model weights read from an object store: a checkpoint uploaded to each store loads
to the same parameters as the model that saved it (a different seed proves they come
from the file, not from the init)."""

import io

import torch

from vlcurate.extractors.clip import ClipConfig, ClipModel
from vlcurate.io import storage

TINY = "vlc-tiny-vit"


def test_weights_from_a_store(store, request):
    saved = ClipModel(ClipConfig(TINY, weights=None, device="cpu", seed=1))
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in saved.model.state_dict().items()}, buf)
    loc = store.url(request.node.name, "tiny.pt")
    storage.write_bytes(loc, buf.getvalue())
    loaded = ClipModel(ClipConfig(TINY, weights=loc, device="cpu", seed=123))
    assert not loaded.weights_are_random
    for (name, a), (_, b) in zip(saved.model.state_dict().items(), loaded.model.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    other = ClipModel(ClipConfig(TINY, weights=None, device="cpu", seed=123))
    assert not torch.equal(next(iter(other.model.state_dict().values())),
                           next(iter(saved.model.state_dict().values())))
