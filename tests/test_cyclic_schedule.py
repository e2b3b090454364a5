from hf_starsse import cycle_boundaries, get_cyclic_cosine_schedule

import math
import pickle

import pytest
import torch

BASE_LR = 0.1


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR, momentum=0.9)


def _closed_form(t, T0, Tc, n, ratio, W0=0, Wc=0):
    def cos_w(s, T, W):
        if s < W:
            return (s + 1) / (W + 1)
        return 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W)))

    if t < T0:
        return BASE_LR * cos_w(t, T0, W0)
    t -= T0
    if t >= n * Tc:
        return 0.0
    return BASE_LR * ratio * cos_w(t % Tc, Tc, Wc)


def _lrs(scheduler, num_steps):
    lrs = []
    for _ in range(num_steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    "T0, Tc, n, ratio, W0, Wc",
    [(10, 6, 3, 2.0, 0, 0), (8, 8, 4, 0.25, 2, 0), (12, 5, 2, 4.0, 0, 2), (7, 14, 1, 1.0, 3, 4)],
)
def test_lr_equals_closed_form_everywhere(T0, Tc, n, ratio, W0, Wc):
    scheduler = get_cyclic_cosine_schedule(_optimizer(), T0, Tc, n, ratio, W0, Wc)
    lrs = _lrs(scheduler, T0 + n * Tc + 3)
    expected = [_closed_form(t, T0, Tc, n, ratio, W0, Wc) for t in range(len(lrs))]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_lr_at_cycle_starts_middles_and_ends():
    T0, Tc, n, ratio = 10, 6, 3, 2.0
    lrs = _lrs(get_cyclic_cosine_schedule(_optimizer(), T0, Tc, n, ratio), T0 + n * Tc + 1)
    assert lrs[0] == pytest.approx(BASE_LR)  # first fine-tuning starts at the base LR (no warmup)
    assert lrs[T0 // 2] == pytest.approx(BASE_LR * 0.5)  # cosine half-way
    assert lrs[T0 - 1] == pytest.approx(BASE_LR * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    for start, end in cycle_boundaries(T0, Tc, n)[1:]:
        assert lrs[start] == pytest.approx(BASE_LR * ratio)  # every cycle jumps to the cycle LR
        assert lrs[start + Tc // 2] == pytest.approx(BASE_LR * ratio * 0.5)
        assert lrs[end - 1] < 0.07 * BASE_LR * ratio  # and decays to ~0
    assert lrs[T0 + n * Tc] == 0.0  # after the last cycle


def test_warmup_ramps_linearly():
    lrs = _lrs(get_cyclic_cosine_schedule(_optimizer(), 10, 10, 1, 1.0, 4, 4), 20)
    assert lrs[:4] == pytest.approx([BASE_LR * (s + 1) / 5 for s in range(4)])
    assert lrs[10:14] == pytest.approx([BASE_LR * (s + 1) / 5 for s in range(4)])
    assert lrs[14] == pytest.approx(BASE_LR)


def test_step_offset_runs_one_cycle_of_the_whole_schedule():
    T0, Tc, n = 10, 6, 3
    whole = _lrs(get_cyclic_cosine_schedule(_optimizer(), T0, Tc, n, 2.0), T0 + n * Tc)
    second_cycle = _lrs(get_cyclic_cosine_schedule(_optimizer(), T0, Tc, n, 2.0, step_offset=T0 + Tc), Tc)
    assert second_cycle == pytest.approx(whole[T0 + Tc : T0 + 2 * Tc])


def test_scheduler_pickles_and_resumes():
    scheduler = get_cyclic_cosine_schedule(_optimizer(), 10, 6, 3, 2.0)
    _lrs(scheduler, 13)
    state = pickle.loads(pickle.dumps(scheduler.state_dict()))
    resumed = get_cyclic_cosine_schedule(_optimizer(), 10, 6, 3, 2.0)
    resumed.load_state_dict(state)
    assert _lrs(resumed, 5) == pytest.approx(_lrs(scheduler, 5))
    pickle.dumps(scheduler)  # the lambda is a module-level function bound with functools.partial


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_first_steps=0, num_cycle_steps=5, num_cycles=1), "num_first_steps"),
        (dict(num_first_steps=5, num_cycle_steps=0, num_cycles=1), "num_cycle_steps"),
        (dict(num_first_steps=5, num_cycle_steps=5, num_cycles=1, cycle_lr_ratio=0), "cycle_lr_ratio"),
        (dict(num_first_steps=5, num_cycle_steps=5, num_cycles=-1), "num_cycles"),
        (dict(num_first_steps=5, num_cycle_steps=5, num_cycles=1, num_cycle_warmup_steps=5), "num_cycle_warmup_steps"),
    ],
)
def test_invalid_schedule_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        get_cyclic_cosine_schedule(_optimizer(), **kwargs)
