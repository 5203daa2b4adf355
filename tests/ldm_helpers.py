"""A fake registration network for the ldm stage's tests."""

import torch


class BiasedRegistration(torch.nn.Module):
    """A fake registration network with a known answer: ``fixed - moving`` on each of 3 channels, plus a constant
    offset field ``bias`` (what it returns for an identical pair)."""

    def __init__(self, shape):
        super().__init__()
        self.bias = torch.linspace(-0.5, 0.7, 3 * int(torch.tensor(shape).prod())).view(1, 3, *shape)

    def forward(self, moving, fixed):
        return (fixed - moving).expand(-1, 3, -1, -1, -1) + self.bias
