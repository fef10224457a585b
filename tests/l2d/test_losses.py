"""The losses against hand-computed values and against the loop references written from the formulas."""

import math

import pytest
import torch

from l2d import losses
from l2d.losses import cd_loss, distillation_loss, id_loss, method_hparams, mld_loss, ps_loss
from l2d.models import ModelOutput
from tests.l2d.reference_losses import cd_loss_loop, id_loss_loop, mld_loss_loop, ps_loss_loop

RTOL = 1e-5


def _random_case(batch=12, classes=7, dim=16, positive_rate=0.4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, dim, generator=generator)
    teacher = torch.randn(batch, classes, dim, generator=generator)
    targets = (torch.rand(batch, classes, generator=generator) < positive_rate).float()
    return student, teacher, targets


def _value_and_grad(fn, student, teacher, targets):
    student = student.detach().clone().requires_grad_(True)
    value = fn(student, teacher, targets)
    value.backward()
    return value.detach(), student.grad


def _assert_matches_loop(fn, loop_fn, student, teacher, targets, grad_rtol=RTOL):
    value, grad = _value_and_grad(fn, student, teacher, targets)
    ref_value, ref_grad = _value_and_grad(loop_fn, student.float(), teacher.float(), targets)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    torch.testing.assert_close(value, ref_value, rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(grad.float(), ref_grad, rtol=grad_rtol, atol=1e-6)
    return value


# --- Hand-computed values -----------------------------------------------------------------------------

# Student points (0,0), (3,0), (0,4): distances 3, 4, 5, mean 4, so phi = 0.75, 1, 1.25.
# Teacher: an equilateral triangle, phi = 1 everywhere. Each of the 6 ordered pairs differs by 0.25, 0 or 0.25:
# smoothL1 = 0.5 * 0.25^2 = 1/32 for 4 of them, so sum = 1/8, and H = (1/8) / n = 1/24.
TRIANGLE_STUDENT = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
TRIANGLE_TEACHER = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
TRIANGLE_H = 1.0 / 24.0


def test_cd_hand_computed():
    # One class with three positive images (the triangle), one class with a single positive (contributes 0).
    student = torch.zeros(3, 2, 2)
    teacher = torch.zeros(3, 2, 2)
    student[:, 0], teacher[:, 0] = TRIANGLE_STUDENT, TRIANGLE_TEACHER
    student[:, 1], teacher[:, 1] = torch.randn(3, 2), torch.randn(3, 2)
    targets = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert cd_loss(student, teacher, targets).item() == pytest.approx(TRIANGLE_H, rel=1e-6)
    # Two classes, each with the triangle: CD sums over classes (not a mean).
    doubled = cd_loss(student[:, [0, 0]], teacher[:, [0, 0]], torch.ones(3, 2))
    assert doubled.item() == pytest.approx(2 * TRIANGLE_H, rel=1e-6)


def test_id_hand_computed():
    # One image whose three positive labels are the triangle; a second image with all three labels
    # positive and the same geometry: ID sums over images.
    student = TRIANGLE_STUDENT.unsqueeze(0).repeat(2, 1, 1)
    teacher = TRIANGLE_TEACHER.unsqueeze(0).repeat(2, 1, 1)
    assert id_loss(student[:1], teacher[:1], torch.ones(1, 3)).item() == pytest.approx(TRIANGLE_H, rel=1e-6)
    assert id_loss(student, teacher, torch.ones(2, 3)).item() == pytest.approx(2 * TRIANGLE_H, rel=1e-6)
    # Scaling or translating a set does not change its structure.
    moved = student * 7.0 + 3.0
    assert id_loss(moved, teacher, torch.ones(2, 3)).item() == pytest.approx(2 * TRIANGLE_H, rel=1e-5)


def test_mld_hand_computed():
    # pS = sigmoid(0) = 1/2, pT = sigmoid(ln 3) = 3/4: 3/4 ln(3/2) + 1/4 ln(1/2) per label.
    per_label = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student = torch.zeros(2, 3)
    teacher = torch.full((2, 3), math.log(3.0))
    # Summed over the 3 labels, averaged over the 2 images.
    assert mld_loss(student, teacher).item() == pytest.approx(3 * per_label, rel=1e-6)
    assert mld_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_mld_saturated_logits_stay_finite():
    student = torch.tensor([[40.0, -40.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[-40.0, 40.0, 0.0]])
    value = mld_loss(student, teacher)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()
    # Clamped at 1e-8: each saturated label costs about log(1e8) nats.
    assert value.item() == pytest.approx(2 * math.log(1e8), rel=1e-3)


def test_bce_is_summed():
    logits = torch.zeros(4, 5)
    assert losses.bce_loss(logits, torch.ones(4, 5)).item() == pytest.approx(20 * math.log(2), rel=1e-6)


def test_kd_and_mse_hand_computed():
    student = torch.zeros(2, 2)
    teacher = torch.zeros(2, 2)
    # Soft target 1/2 on logit 0: BCE = ln 2 per label; T^2 = 4; 4 labels / 2 images.
    assert losses.kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * 4 * math.log(2) / 2)
    teacher = torch.tensor([[1.0, 2.0], [0.0, -3.0]])
    assert losses.mse_loss(student, teacher).item() == pytest.approx((1 + 4 + 0 + 9) / 2)


def test_dist_hand_computed():
    # Teacher probabilities T and student S, built so that every correlation is +-1:
    # row 1 of S is row 1 of T reversed (rho -1), row 2 of S is 0.5 T + 0.25 (rho +1): L_inter = 1 - mean(-1, 1) = 1.
    # Each column moves the same way in S and T over the 2 images (rho +1 for all 3): L_intra = 1 - 1 = 0.
    teacher_p = torch.tensor([[0.2, 0.5, 0.8], [0.1, 0.1, 0.9]])
    student_p = torch.tensor([[0.8, 0.5, 0.2], [0.3, 0.3, 0.7]])
    inter, intra = losses.dist_losses(torch.logit(student_p), torch.logit(teacher_p))
    assert inter.item() == pytest.approx(1.0, abs=1e-5) and intra.item() == pytest.approx(0.0, abs=1e-5)
    # With T = 2 the probabilities are sigmoid(z / 2) (the same ones for doubled logits) and the loss is x T^2 = 4.
    inter, intra = losses.dist_losses(2 * torch.logit(student_p), 2 * torch.logit(teacher_p), temperature=2.0)
    assert inter.item() == pytest.approx(4.0, abs=1e-4) and intra.item() == pytest.approx(0.0, abs=1e-4)
    # Anti-correlated columns: intra = 1 - (-1) = 2.
    inter, intra = losses.dist_losses(torch.logit(teacher_p.flip(0)), torch.logit(teacher_p))
    assert intra.item() == pytest.approx(2.0, abs=1e-5)


def test_logit_standardisation_hand_computed():
    # [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1]; [10, 20, 30] standardises to the same.
    torch.testing.assert_close(
        losses.standardize_logits(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[-1.0, 0.0, 1.0]]), atol=1e-6, rtol=0
    )
    student, teacher = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]])
    # Same relative scores: mld-ls is 0, plain MLD is not (it matches magnitudes).
    assert losses.mld_loss(student, teacher, standardize=True).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.mld_loss(student, teacher).item() > 0.4

    # Reversed order, T = 2: per label KL(Bern(sigmoid(t/2)) || Bern(sigmoid(s/2))), s = [-1, 0, 1], t = [1, 0, -1];
    # summed over labels, one image, times T^2.
    def kl(t, s):
        p, q = 1 / (1 + math.exp(-t)), 1 / (1 + math.exp(-s))
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    expected = 4 * (kl(0.5, -0.5) + kl(0.0, 0.0) + kl(-0.5, 0.5))
    reversed_teacher = torch.tensor([[3.0, 2.0, 1.0]])
    assert losses.mld_loss(student, reversed_teacher, standardize=True, temperature=2.0).item() == pytest.approx(
        expected, rel=1e-5
    )
    # kd-ls: the KD of the standardised logits (T^2 / B sum BCE(sigmoid(s'/T), sigmoid(t'/T))).
    z = torch.tensor([[-1.0, 0.0, 1.0]])
    torch.testing.assert_close(losses.kd_loss(student, teacher, 2.0, standardize=True), losses.kd_loss(z, z, 2.0))


def test_ablation_methods_are_parts_of_l2d():
    student, teacher, targets = _outputs()
    _, l2d_parts = distillation_loss("l2d", student, teacher, targets)
    _, cd_parts = distillation_loss("cd", student, teacher, targets)
    _, id_parts = distillation_loss("id", student, teacher, targets)
    assert tuple(cd_parts) == ("bce", "cd") and tuple(id_parts) == ("bce", "id")
    torch.testing.assert_close(cd_parts["cd"], l2d_parts["cd"])
    torch.testing.assert_close(id_parts["id"], l2d_parts["id"])


def test_live_parts_are_the_weighted_terms_and_their_gradient_shares_add_up():
    from l2d.engine import gradient_shares

    student, teacher, targets = _outputs()
    leaf = student.logits.detach().requires_grad_(True)
    embeddings = student.label_embeddings.detach().requires_grad_(True)
    student = ModelOutput(leaf, embeddings, student.features)
    live = {}
    total, parts = losses.DistillationCriterion("l2d", {"lambda_cd": 0.0})(student, teacher, targets, live=live)
    assert set(live) == {"bce", "mld", "cd", "id"}
    torch.testing.assert_close(sum(live.values()), total)
    torch.testing.assert_close(live["mld"].detach(), 10.0 * parts["mld"])
    shares = gradient_shares(live, [leaf, embeddings])
    assert sum(shares[f"grad_share_{p}"] for p in live) == pytest.approx(1.0)
    assert shares["grad_norm_cd"] == 0.0  # weight 0: no gradient
    # The norm of a part is that of its own gradient, computed by hand for the BCE: d/dz sum BCE = sigmoid(z) - y.
    expected = (torch.sigmoid(leaf) - targets).norm().item()
    assert shares["grad_norm_bce"] == pytest.approx(expected, rel=1e-5)
    assert leaf.grad is None  # nothing accumulated: training is the same with or without the diagnostics


# --- Vectorized vs loop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn,loop_fn", [(cd_loss, cd_loss_loop), (id_loss, id_loss_loop)], ids=["cd", "id"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_random(fn, loop_fn, seed):
    student, teacher, targets = _random_case(seed=seed)
    value = _assert_matches_loop(fn, loop_fn, student, teacher, targets)
    assert value > 0


@pytest.mark.parametrize("fn,loop_fn", [(cd_loss, cd_loss_loop), (id_loss, id_loss_loop)], ids=["cd", "id"])
def test_matches_loop_reference_coco_shape(fn, loop_fn):
    student, teacher, targets = _random_case(batch=16, classes=80, dim=768, positive_rate=2.9 / 80, seed=3)
    _assert_matches_loop(fn, loop_fn, student, teacher, targets)


@pytest.mark.parametrize("fn", [cd_loss, id_loss], ids=["cd", "id"])
def test_no_set_with_two_members_is_exactly_zero(fn):
    student, teacher, _ = _random_case(batch=4, classes=4)
    targets = torch.eye(4)  # every class and every image has exactly one positive
    value, grad = _value_and_grad(fn, student, teacher, targets)
    assert value.item() == 0.0
    assert torch.all(grad == 0)
    value, grad = _value_and_grad(fn, student, teacher, torch.zeros(4, 4))
    assert value.item() == 0.0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn,loop_fn", [(cd_loss, cd_loss_loop), (id_loss, id_loss_loop)], ids=["cd", "id"])
def test_sets_of_two_contribute_zero(fn, loop_fn):
    student, teacher, _ = _random_case(batch=4, classes=4)
    targets = torch.tensor([[1.0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    value = _assert_matches_loop(fn, loop_fn, student, teacher, targets)
    assert value.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fn,loop_fn", [(cd_loss, cd_loss_loop), (id_loss, id_loss_loop)], ids=["cd", "id"])
def test_rows_with_every_label_positive(fn, loop_fn):
    student, teacher, targets = _random_case(batch=6, classes=5)
    targets[0] = 1.0
    targets[3] = 1.0
    _assert_matches_loop(fn, loop_fn, student, teacher, targets)
    _assert_matches_loop(fn, loop_fn, student, teacher, torch.ones(6, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn,loop_fn", [(cd_loss, cd_loss_loop), (id_loss, id_loss_loop)], ids=["cd", "id"])
def test_half_precision_inputs_computed_in_float32(fn, loop_fn, dtype):
    student, teacher, targets = _random_case()
    student, teacher = student.to(dtype), teacher.to(dtype)
    value = fn(student, teacher, targets)
    assert value.dtype == torch.float32
    # The value is float32 throughout; autograd rounds the gradient to the input's dtype, hence its tolerance.
    _assert_matches_loop(fn, loop_fn, student, teacher, targets, grad_rtol=torch.finfo(dtype).eps)


@pytest.mark.parametrize(
    "fn",
    [
        cd_loss,
        id_loss,
        lambda s, t, y: mld_loss(s[..., 0], t[..., 0]),
        lambda s, t, y: ps_loss(s[..., 0], t[..., 0], y),
    ],
    ids=["cd", "id", "mld", "ps"],
)
def test_empty_batch(fn):
    student = torch.zeros(0, 5, 8, requires_grad=True)
    value = fn(student, torch.zeros(0, 5, 8), torch.zeros(0, 5))
    assert value.item() == 0.0
    value.backward()
    assert student.grad is not None and student.grad.shape == student.shape


def test_teacher_gets_no_gradient():
    student, teacher, targets = _random_case()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    (
        cd_loss(student, teacher, targets)
        + id_loss(student, teacher, targets)
        + mld_loss(student[..., 0], teacher[..., 0])
    ).backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_mld_matches_loop_reference():
    generator = torch.Generator().manual_seed(5)
    student = (torch.randn(6, 9, generator=generator) * 4).requires_grad_(True)
    teacher = torch.randn(6, 9, generator=generator) * 4
    value = mld_loss(student, teacher)
    value.backward()
    reference_student = student.detach().clone().requires_grad_(True)
    reference = mld_loss_loop(reference_student, teacher)
    reference.backward()
    assert value.item() == pytest.approx(reference.item(), rel=RTOL)
    torch.testing.assert_close(student.grad, reference_student.grad, rtol=1e-4, atol=1e-7)


def test_ps_matches_loop_reference():
    student, teacher, targets = _random_case(batch=8, classes=6)
    targets[2] = 1.0  # an image with no negative: each distribution is a single label, KL 0
    targets[5] = 0.0  # an image with no positive: no distribution at all
    value, grad = _value_and_grad(lambda s, t, y: ps_loss(s[..., 0], t[..., 0], y), student, teacher, targets)
    ref, ref_grad = _value_and_grad(lambda s, t, y: ps_loss_loop(s[..., 0], t[..., 0], y), student, teacher, targets)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(value, ref, rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=RTOL, atol=1e-6)


def test_feature_baselines_zero_for_identical_relations():
    features = torch.randn(10, 32)
    # RKD and PKT compare relations: a scaled copy has the same distances (normalized) and cosines.
    assert losses.rkd_loss(features * 3.0, features).item() == pytest.approx(0.0, abs=1e-5)
    assert losses.pkt_loss(features * 3.0, features).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(10, 16, requires_grad=True)
    for value in (losses.rkd_loss(student, features), losses.pkt_loss(student, features)):
        assert value.item() > 0
        value.backward()
    assert torch.isfinite(student.grad).all()


# --- Registry and entry point ---------------------------------------------------------------------------


def _outputs(batch=6, classes=5, dim=8, features=12, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def output():
        return ModelOutput(
            torch.randn(batch, classes, generator=generator),
            torch.randn(batch, classes, dim, generator=generator),
            torch.randn(batch, features, generator=generator),
        )

    targets = (torch.rand(batch, classes, generator=generator) < 0.5).float()
    return output(), output(), targets


OUTPUT_METHODS = sorted(m for m in losses.METHODS if not any(losses.TERMS[t].stages for t in losses.METHODS[m].terms))


@pytest.mark.parametrize("method", OUTPUT_METHODS)
def test_every_method_runs_and_reports_its_parts(method):
    student, teacher, targets = _outputs()
    student = student.map(lambda t: t.requires_grad_(True))
    total, parts = distillation_loss(method, student, teacher, targets)
    assert tuple(parts) == losses.loss_parts(method)
    hparams = method_hparams(method)
    weights = {
        part: hparams[name]
        for term in losses.METHODS[method].terms
        for part, name in losses.TERMS[term].weights.items()
    }
    expected = parts["bce"] + sum(weights[part] * parts[part] for part in weights)
    torch.testing.assert_close(total.detach(), expected)
    total.backward()
    assert torch.isfinite(student.logits.grad).all()


def test_fused_cd_id_equals_separate():
    student, teacher, targets = _random_case(seed=4)
    cd, instance = losses.cd_id_losses(student, teacher, targets)
    torch.testing.assert_close(cd, cd_loss(student, teacher, targets))
    torch.testing.assert_close(instance, id_loss(student, teacher, targets))


def test_l2d_total_uses_official_weights():
    student, teacher, targets = _outputs()
    total, _ = distillation_loss("l2d", student, teacher, targets)
    expected = (
        losses.bce_loss(student.logits, targets)
        + 10 * mld_loss(student.logits, teacher.logits)
        + 100 * cd_loss(student.label_embeddings, teacher.label_embeddings, targets)
        + 1000 * id_loss(student.label_embeddings, teacher.label_embeddings, targets)
    )
    torch.testing.assert_close(total, expected)
    custom, _ = distillation_loss("l2d", student, teacher, targets, {"lambda_cd": 0.0, "lambda_id": 0.0})
    torch.testing.assert_close(
        custom, losses.bce_loss(student.logits, targets) + 10 * mld_loss(student.logits, teacher.logits)
    )


def test_part_weights():
    assert losses.part_weights("l2d") == {"bce": 1.0, "mld": 10.0, "cd": 100.0, "id": 1000.0}
    assert losses.part_weights("led", {"lambda_cd": 2.0}) == {"bce": 1.0, "cd": 2.0, "id": 1000.0}
    assert losses.part_weights("bce") == {"bce": 1.0}
    assert losses.part_weights("kd") == {"bce": 1.0, "kd": 10.0}  # the temperature weighs no part


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown method 'l3d'.*l2d"):
        method_hparams("l3d")
    with pytest.raises(ValueError, match="'lambda_cd'.*lambda_kd, kd_temperature"):
        method_hparams("kd", {"lambda_cd": 1.0})
    with pytest.raises(ValueError, match="lambda_mld must be"):
        method_hparams("mld", {"lambda_mld": -1.0})
    with pytest.raises(ValueError, match="needs a teacher"):
        distillation_loss("l2d", _outputs()[0], None, _outputs()[2])


# --- Feature-level methods: stages and connectors --------------------------------------------------------------


def test_hint_loss_by_hand():
    connector = losses.HintConnector(3, 3).eval()
    with torch.no_grad():
        connector.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    scale = 1 / (1 + connector.norm.eps) ** 0.5  # BatchNorm in eval with its initial running statistics
    student = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 50
    teacher = torch.ones(2, 3, 2, 2)
    # The student's 4 x 4 map is average-pooled to the teacher's 2 x 2 before the squared error.
    pooled = student.view(2, 3, 2, 2, 2, 2).mean((3, 5)) * scale
    expected = ((pooled - teacher) ** 2).mean()
    torch.testing.assert_close(losses.hint_loss(student, teacher, connector), expected)
    # Same sizes: a plain mean squared error; identical maps give 0.
    assert losses.hint_loss(teacher / scale, teacher, connector).item() == pytest.approx(0.0, abs=1e-10)


def test_hint_criterion_asks_for_the_last_stage_and_owns_a_connector():
    from l2d.models import build_model, stage_channels

    student, teacher = build_model("test_resnet", 5, 16), build_model("test_efficientnet", 5, 16).eval()
    criterion = losses.DistillationCriterion("hint", None, student, teacher)
    last_student, last_teacher = len(stage_channels(student)) - 1, len(stage_channels(teacher)) - 1
    assert criterion.student_stages == (last_student,) and criterion.teacher_stages == (last_teacher,)
    connector = criterion.connectors["hint"]
    assert connector.conv.in_channels == stage_channels(student)[-1]
    assert connector.conv.out_channels == stage_channels(teacher)[-1]
    images = torch.rand(4, 3, 32, 32)
    student_output = student(images, stages=criterion.student_stages)
    teacher_output = teacher(images, stages=criterion.teacher_stages)
    assert student_output.stages[0].shape[1] == stage_channels(student)[-1]
    total, parts = criterion(student_output, teacher_output, (torch.rand(4, 5) < 0.5).float())
    assert set(parts) == {"bce", "hint"}
    torch.testing.assert_close(total.detach(), parts["bce"] + 100.0 * parts["hint"])
    total.backward()
    assert connector.conv.weight.grad is not None and connector.conv.weight.grad.abs().sum() > 0
    # Without the models the criterion cannot size its connector.
    with pytest.raises(ValueError, match="needs the student and the teacher"):
        distillation_loss("hint", student_output, teacher_output, torch.zeros(4, 5))
    # An output-level method has no stages and no parameters.
    plain = losses.DistillationCriterion("l2d")
    assert plain.student_stages == () and not list(plain.parameters())


def test_rkd_is_the_official_formulation():
    from tests.l2d.reference_losses import rkd_loss_loop

    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(6, 5, generator=generator), torch.randn(6, 7, generator=generator)
    assert losses.rkd_loss(student, teacher).item() == pytest.approx(rkd_loss_loop(student, teacher), rel=1e-5)
    assert losses.rkd_loss(student, teacher, 25.0, 50.0).item() == pytest.approx(
        rkd_loss_loop(student, teacher, 25.0, 50.0), rel=1e-5
    )


def test_hcl_loss_equals_the_loop_formulation():
    from tests.l2d.reference_losses import hcl_loss_loop

    generator = torch.Generator().manual_seed(5)
    # Sizes that exercise every pyramid level (8: 4, 2, 1; 3: 2, 1 with uneven windows; 1: none).
    student = [torch.randn(2, 3, size, size, generator=generator) for size in (8, 3, 1)]
    teacher = [torch.randn(2, 3, size, size, generator=generator) for size in (8, 3, 1)]
    assert losses.hcl_loss(student, teacher).item() == pytest.approx(hcl_loss_loop(student, teacher), rel=1e-5)
    assert losses.hcl_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_reviewkd_fuses_from_the_deepest_level_and_trains_its_connectors():
    from l2d.models import build_model, stage_channels

    student, teacher = build_model("test_resnet", 5, 16), build_model("test_efficientnet", 5, 16).eval()
    criterion = losses.DistillationCriterion("reviewkd", None, student, teacher)
    connector = criterion.connectors["reviewkd"]
    levels = len(connector.fusions)
    assert criterion.student_stages == tuple(
        range(len(stage_channels(student)) - levels + 1, len(stage_channels(student)))
    )
    # The deepest level (the pooled features) has no residual to fuse; every other level fuses one.
    assert connector.fusions[-1].attention is None and all(f.attention is not None for f in connector.fusions[:-1])
    assert connector.fusions[-1].output[0].out_channels == teacher.backbone.num_features
    images = torch.rand(4, 3, 32, 32)
    total, parts = criterion(
        student(images, stages=criterion.student_stages),
        teacher(images, stages=criterion.teacher_stages),
        (torch.rand(4, 5) < 0.5).float(),
    )
    assert set(parts) == {"bce", "reviewkd"} and parts["reviewkd"] > 0
    total.backward()
    assert all(f.reduce[0].weight.grad is not None for f in connector.fusions)
    assert all(f.attention[0].weight.grad.abs().sum() > 0 for f in connector.fusions[:-1])


def test_official_weights_carried_by_label_count_and_by_a_measured_factor():
    assert losses.official_weights("l2d") == {"lambda_mld": 10.0, "lambda_cd": 100.0, "lambda_id": 1000.0}
    assert losses.official_weights("led", "labels", num_classes=20) == {"lambda_cd": 25.0, "lambda_id": 250.0}
    assert losses.official_weights("mld", "balanced", factor=0.5) == {"lambda_mld": 5.0}
    with pytest.raises(ValueError, match="needs its measured factor"):
        losses.official_weights("l2d", "balanced")
    with pytest.raises(ValueError, match="unknown weight rule 'x'; allowed: official, labels, balanced"):
        losses.official_weights("l2d", "x")
    with pytest.raises(ValueError, match="method 'kd' has no official weights"):
        losses.official_weights("kd")
