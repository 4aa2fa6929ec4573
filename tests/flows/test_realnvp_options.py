import pytest
import torch

from flowvi.flows import Clamp, Couplings, Marginals, RealNVPOptions, Tails, realnvp


def test_grouped_and_flat_options_build_the_same_flow():
    grouped = RealNVPOptions(
        couplings=Couplings(layers=3, hidden=16, permute="random"),
        clamp=Clamp(clamp="symmetric", alpha=1.5),
        marginals=Marginals(spline=True, spline_bins=4),
        tails=Tails(base="student_t", df=3.0, tau=20.0),
        seed=7,
    )
    flat = grouped.flat()
    assert RealNVPOptions.from_flat(**flat) == grouped
    torch.manual_seed(0)
    a = realnvp(6, grouped)
    torch.manual_seed(0)
    b = realnvp(6, **flat)
    assert repr(a) == repr(b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    z = torch.randn(5, 6)
    torch.testing.assert_close(a.log_prob(z), b.log_prob(z))


def test_unknown_or_mixed_options_are_refused():
    with pytest.raises(TypeError, match="unknown option 'widht'"):
        realnvp(4, widht=3)
    with pytest.raises(TypeError, match="not both"):
        realnvp(4, RealNVPOptions(), layers=2)
    with pytest.raises(ValueError, match="unknown clamp"):
        realnvp(4, clamp="soft")
