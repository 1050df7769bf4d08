"""Tests of PRESS-Net: shapes, the stage-by-stage path, dropout, sizes and numerics."""

import dataclasses
import functools
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eesep_jax import models
from eesep_jax.core import probabilistic
from eesep_jax.models import layers
from eesep_jax.models import press_net

TIME = 801  # Odd, and not a multiple of the encoder's stride.


def _mixture(batch=2, time=TIME, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, time))


def _init(config):
  # Parameters do not depend on the length: a short one compiles faster.
  return jax.jit(models.PressNet(config).init)(jax.random.key(1), _mixture(time=64))


@functools.partial(jax.jit, static_argnames="config")
def _forward(variables, mixture, rngs=None, *, config):
  """The forward pass with `train=False`."""
  return models.PressNet(config).apply(variables, mixture, rngs=rngs)


def _check_output_shapes(outputs, config, batch, time):
  blocks = probabilistic.num_variance_blocks(time, config.variance)
  exits, sources = config.num_exits, config.num_sources
  assert outputs["estimates"].shape == (exits, batch, sources, time)
  assert outputs["estimates"].dtype == jnp.float32
  assert outputs["variance"]
  for value in outputs["variance"].values():
    assert value.shape == (exits, batch, sources, blocks)


@pytest.fixture(scope="module")
def tiny():
  """The tiny preset with dropout and a monotone, per-block variance (so the stage
  state matters), its parameters, a mixture and the forward's outputs (train=False).

  Every test that compiles a new program costs seconds, so they share this one.
  """
  config = models.preset(
    "tiny", dropout=0.5, variance=probabilistic.VarianceConfig(monotone=True, block_length=300)
  )
  variables, mixture = _init(config), _mixture()
  outputs = _forward(variables, mixture, {"dropout": jax.random.key(7)}, config=config)
  return config, variables, mixture, outputs


# --------------------------------------------------------------------------- config


def test_preset_overrides_round_trip_and_unknown_names():
  config = models.preset("tiny", num_sources=3, variance={"monotone": True})
  assert config.num_sources == 3 and config.variance.monotone
  assert models.PressNetConfig.from_dict(config.to_dict()) == config
  assert hash(config) == hash(models.PressNetConfig.from_dict(config.to_dict()))
  assert isinstance(config.to_dict()["variance"], dict)
  with pytest.raises(ValueError, match="press-12"):
    models.preset("press-99")
  with pytest.raises(ValueError, match="multiple of num_exits"):
    models.preset("press-4", num_exits=5)


def test_frame_layout_covers_every_sample():
  config = models.preset("tiny")
  kernel, stride = config.encoder_kernel, config.encoder_stride
  for time in range(1, 60):
    left, right, frames = models.frame_layout(time, config)
    assert (frames - 1) * stride + kernel == left + time + right
    assert left == kernel - stride and right >= left  # Full overlap at both ends.


# --------------------------------------------------------------------------- layers


def _sequential_recurrence(decay, update):
  """Reference: one step per frame with `lax.scan`, forward then backward in time."""

  def run(decay, update, reverse):
    step = lambda state, x: (x[0] * state + x[1],) * 2  # noqa: E731
    frames_first = lambda x: jnp.moveaxis(x, -2, 0)  # noqa: E731
    _, states = jax.lax.scan(
      step,
      jnp.zeros_like(decay[..., 0, :]),
      (frames_first(decay), frames_first(update)),
      reverse=reverse,
    )
    return jnp.moveaxis(states, 0, -2)

  half = decay.shape[-1] // 2
  return jnp.concatenate(
    [
      run(decay[..., :half], update[..., :half], False),
      run(decay[..., half:], update[..., half:], True),
    ],
    axis=-1,
  )


# Frames below, at and across the two-level scan's chunk of 32, with a partial chunk.
@pytest.mark.parametrize("form", ["chunked", "associative"])
@pytest.mark.parametrize("frames", [1, 32, 37, 100])
def test_bidirectional_recurrence_and_its_gradient_match_a_loop(frames, form):
  decay = jax.random.uniform(jax.random.key(0), (2, frames, 6))
  update = jax.random.normal(jax.random.key(1), (2, frames, 6))
  weights = jax.random.normal(jax.random.key(2), (2, frames, 6))

  def states_and_gradients(recurrence):
    def loss(decay, update):
      states = recurrence(decay, update)
      return jnp.sum(weights * jnp.square(states)), states

    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))

  got = states_and_gradients(functools.partial(layers.bidirectional_linear_recurrence, form=form))
  want = states_and_gradients(_sequential_recurrence)
  for g, w in zip(jax.tree.leaves(got(decay, update)), jax.tree.leaves(want(decay, update))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def _values_and_gradients(module, variables, x, weights):
  """`module`'s output and the gradients of a weighted sum of its squares with respect
  to the input and every parameter."""

  def loss(variables, x):
    # `nn.ConvTranspose` keeps a trailing axis of one feature.
    y = module.apply(variables, x).reshape(weights.shape)
    return jnp.sum(weights * jnp.square(y)), y

  return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(variables, x)


def _assert_same_as_flax(module, reference, input_shape, output_shape):
  """`module` and the Flax module it stands in for: same parameters, outputs and
  gradients."""
  x = jax.random.normal(jax.random.key(0), input_shape)
  variables = reference.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, module.init(jax.random.key(1), x)) == jax.tree.map(
    jnp.shape, variables
  )
  weights = jax.random.normal(jax.random.key(2), output_shape)
  got = _values_and_gradients(module, variables, x, weights)
  want = _values_and_gradients(reference, variables, x, weights)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


# Kernels odd and even, shorter and longer than the kernel-gradient's block of 64 frames.
@pytest.mark.parametrize("form", ["shifted", "grouped"])
@pytest.mark.parametrize("kernel, frames", [(3, 5), (4, 70), (65, 130), (31, 200)])
def test_depthwise_convolution_matches_flax_grouped_convolution(kernel, frames, form):
  channels = 6
  _assert_same_as_flax(
    layers.DepthwiseConv(kernel, form),
    nn.Conv(channels, (kernel,), padding="SAME", feature_group_count=channels),
    (3, frames, channels),
    (3, frames, channels),
  )


def test_unknown_layer_forms_are_refused():
  with pytest.raises(ValueError, match="recurrence_form='parallel'"):
    models.preset("tiny", recurrence_form="parallel")
  with pytest.raises(ValueError, match="depthwise_form='fft'"):
    models.preset("tiny", depthwise_form="fft")
  # "auto" is the CPU form on CPU, where these tests run.
  assert jax.default_backend() == "cpu"
  auto = models.preset("tiny")
  assert (auto.resolved_recurrence_form, auto.resolved_depthwise_form) == ("chunked", "shifted")
  forced = models.preset("tiny", recurrence_form="associative", depthwise_form="grouped")
  assert (forced.resolved_recurrence_form, forced.resolved_depthwise_form) == (
    "associative",
    "grouped",
  )


@pytest.mark.parametrize("kernel, stride, frames", [(16, 8, 9), (4, 2, 1), (6, 3, 40)])
def test_transposed_convolution_matches_flax(kernel, stride, frames):
  _assert_same_as_flax(
    press_net.TransposedConvolution(kernel, stride),
    nn.ConvTranspose(1, (kernel,), strides=(stride,), padding="VALID", use_bias=False),
    (2, frames, 5),
    (2, (frames - 1) * stride + kernel),
  )


def test_fresh_block_is_near_identity(tiny):
  config, variables = tiny[:2]
  # The shared trunk's first block, as initialised.
  params = jax.tree.map(lambda p: p[0], variables["params"]["shared"]["blocks"])
  x = jax.random.normal(jax.random.key(0), (2, 20, config.width))
  every_frame = jnp.ones(x.shape[:-1] + (1,))
  apply = jax.jit(
    lambda params: layers.Block(config).apply({"params": params}, x, every_frame, False)[0]
  )
  change = jnp.abs(apply(params) - x)
  assert 0.0 < float(jnp.max(change)) < 1e-3
  # With LayerScale at 1 the same block changes its input: the 1e-5 is what keeps it still.
  scaled = jax.tree_util.tree_map_with_path(
    lambda path, p: jnp.ones_like(p) if "LayerScale" in jax.tree_util.keystr(path) else p, params
  )
  assert float(jnp.max(jnp.abs(apply(scaled) - x))) > 0.1


# --------------------------------------------------------------------------- forward


def test_forward_shapes_and_values(tiny):
  config, _, mixture, outputs = tiny
  _check_output_shapes(outputs, config, *mixture.shape)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(outputs))


@pytest.mark.parametrize("num_sources, time, block_length", [(1, 799, None), (3, 13, 5)])
def test_output_shapes_for_any_sources_and_length(num_sources, time, block_length):
  config = models.preset("tiny", num_sources=num_sources, variance={"block_length": block_length})
  model, mixture = models.PressNet(config), _mixture(batch=3, time=time)
  variables = jax.eval_shape(model.init, jax.random.key(0), mixture)
  _check_output_shapes(jax.eval_shape(model.apply, variables, mixture), config, 3, time)


def test_training_scan_equals_stage_by_stage(tiny):
  config, variables, mixture, outputs = tiny
  carry = models.PressNet(config).apply(variables, mixture, method=models.PressNet.encode)
  state = probabilistic.init_variance_state(
    (mixture.shape[0], config.num_sources),
    probabilistic.num_variance_blocks(mixture.shape[1], config.variance),
    config.variance,
  )
  apply_stage = jax.jit(models.apply_stage, static_argnums=(0, 3))
  for k in range(config.num_exits):
    carry, state, exit_output = apply_stage(
      config, models.stage_params(variables, jnp.int32(k)), carry, mixture.shape[1], state
    )
    expected = jax.tree.map(operator.itemgetter(k), outputs)
    assert jax.tree.structure(exit_output) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(exit_output), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  # Stages differ, so a stage applied twice would have been caught.
  assert float(jnp.max(jnp.abs(outputs["estimates"][0] - outputs["estimates"][1]))) > 1e-4


@pytest.mark.parametrize("block_length", [None, 300])
def test_padded_batch_gives_each_example_its_own_outputs(block_length):
  """Zero-padded to one length with valid `lengths`, every example gets the estimates,
  variances and exit probabilities it gets alone: what lets evaluation and `separate`
  batch utterances of many lengths into one compiled program."""
  config = models.preset(
    "tiny", variance=probabilistic.VarianceConfig(monotone=True, block_length=block_length)
  )
  variables = _init(config)
  lengths = (TIME, 517, 64)  # 64 samples: shorter than one variance block.
  padded = jnp.stack([jnp.pad(_mixture(1, n, seed=n)[0], (0, TIME - n)) for n in lengths])
  # Garbage beyond each length must not matter either.
  padded = padded + 5.0 * (jnp.arange(TIME) >= jnp.asarray(lengths)[:, None])
  apply = jax.jit(models.PressNet(config).apply)
  exit_probability = jax.jit(
    functools.partial(probabilistic.exit_probability, config=config.variance)
  )
  batched = apply(variables, padded, lengths=jnp.asarray(lengths))
  for row, n in enumerate(lengths):
    alone = apply(variables, _mixture(1, n, seed=n))
    estimates = batched["estimates"][:, row]
    np.testing.assert_allclose(estimates[..., :n], alone["estimates"][:, 0], atol=1e-5)
    np.testing.assert_array_equal(estimates[..., n:], 0.0)
    blocks = probabilistic.num_variance_blocks(n, config.variance)
    for name, value in alone["variance"].items():
      np.testing.assert_allclose(
        batched["variance"][name][:, row, :, :blocks],
        value[:, 0],
        rtol=1e-5,
        atol=1e-6,
        err_msg=name,
      )
    np.testing.assert_allclose(
      exit_probability(
        estimates, jax.tree.map(lambda v: v[:, row], batched["variance"]), 10.0, lengths=n
      ),
      exit_probability(
        alone["estimates"][:, 0], jax.tree.map(lambda v: v[:, 0], alone["variance"]), 10.0
      ),
      atol=1e-5,
    )


def test_monotone_variance_never_gets_worse(tiny):
  # Holds only if every stage gets the running sums the previous one returned.
  variance = tiny[3]["variance"]  # Each [exits, batch, sources, blocks].
  assert bool(jnp.all(jnp.diff(variance["alpha"], axis=0) >= 0))
  assert bool(jnp.all(jnp.diff(variance["beta"], axis=0) <= 0))


# --------------------------------------------------------------------------- dropout


def test_dropout_is_off_without_train(tiny):
  config, variables, mixture, outputs = tiny
  assert config.dropout > 0
  other_key = _forward(variables, mixture, {"dropout": jax.random.key(8)}, config=config)
  np.testing.assert_array_equal(other_key["estimates"], outputs["estimates"])


def test_dropout_is_seeded_and_split_over_stages(tiny):
  config, variables, mixture, _ = tiny
  masks = []

  def record_masks(next_fun, args, kwargs, context):
    output = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout):
      jax.debug.callback(lambda mask: masks.append(np.asarray(mask)), output == 0, ordered=True)
    return output

  with nn.intercept_methods(record_masks):  # Active while `train` traces.
    train = jax.jit(
      lambda key: models.PressNet(config).apply(
        variables, mixture, train=True, rngs={"dropout": key}
      )["estimates"]
    )
    first = train(jax.random.key(7))
  jax.effects_barrier()
  first_masks, masks[:] = list(masks), []
  np.testing.assert_array_equal(train(jax.random.key(7)), first)
  assert float(jnp.max(jnp.abs(train(jax.random.key(8)) - first))) > 0
  jax.effects_barrier()
  assert len(masks) == 2 * len(first_masks)
  assert all(np.array_equal(a, b) for a, b in zip(first_masks, masks))

  streams = mixture.shape[0] * config.num_sources
  trunk = [m for m in first_masks if m.ndim == 3 and m.shape[0] == streams]
  assert len(trunk) == 3 * config.num_exit_blocks  # Three sub-layers per block.
  assert all(0.4 < m.mean() < 0.6 for m in trunk)
  # Same module in different stages: only a per-stage rng split makes these differ.
  assert len({m.tobytes() for m in trunk}) == len(trunk)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
  "name, params_m, gmacs_by_exit",
  [("press-4", 3.4, {4: 11.3}), ("press-12", 22.4, {8: 54.4, 12: 79.7})],
)
def test_preset_size_and_compute_match_the_reported_ones(name, params_m, gmacs_by_exit):
  config = models.preset(name)
  assert models.count_params(config) == pytest.approx(params_m * 1e6, rel=0.25)
  gmacs = models.gmacs_by_exit(config)
  assert len(gmacs) == config.num_exits
  assert np.all(np.diff(gmacs) > 0)
  for exit_number, expected in gmacs_by_exit.items():
    assert gmacs[exit_number - 1] == pytest.approx(expected, rel=0.25)


# --------------------------------------------------------------------------- numerics


def _loss_and_grads(config, variables, mixture):
  def loss(params):
    outputs = models.PressNet(config).apply({"params": params}, mixture)
    return jnp.mean(jnp.square(outputs["estimates"] - mixture[None, :, None])) + sum(
      jnp.mean(jnp.log(v)) for v in outputs["variance"].values()
    )

  return jax.jit(jax.value_and_grad(loss))(variables["params"])


def test_gradients_are_finite_and_remat_changes_nothing(tiny):
  config, variables = tiny[:2]
  mixture = _mixture(time=201)
  value, grads = _loss_and_grads(config, variables, mixture)
  assert bool(jnp.isfinite(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  # LayerScale's own gradient lacks the 1e-5 factor: zero would mean a stage cut off.
  layer_scale = grads["stages"]["trunk"]["blocks"]["LayerScale_0"]["scale"]  # [E, n, D]
  assert bool(jnp.all(jnp.abs(layer_scale).sum(-1) > 0))

  remat_value, remat_grads = _loss_and_grads(
    dataclasses.replace(config, remat=True), variables, mixture
  )
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


# The accelerator forms against the CPU forms through the whole network, LayerScale 1
# so that every block's layers move the outputs: the loss, each output, and the
# parameters' gradients, each within `tolerance` of its largest magnitude (of the
# largest gradient for the gradients: some are zero up to rounding). float32: 1e-5.
# bfloat16 (the recurrence still runs in float32): 3e-2, what rounding to 8 bits of
# mantissa leaves of the two forms' different order of operations.
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_accelerator_layer_forms_match_the_cpu_forms(dtype, tolerance):
  config = models.preset(
    "tiny", layer_scale_init=1.0, dtype=dtype, recurrence_form="chunked", depthwise_form="shifted"
  )
  variables, mixture = _init(config), _mixture(time=401)

  def outputs_and_grads(config):
    value, grads = _loss_and_grads(config, variables, mixture)
    outputs = _forward(variables, mixture, config=config)
    return [[value], jax.tree.leaves(outputs), jax.tree.leaves(grads)]

  want = outputs_and_grads(config)
  got = outputs_and_grads(
    dataclasses.replace(config, recurrence_form="associative", depthwise_form="grouped")
  )
  for leaves_got, leaves_want, shared_scale in zip(got, want, (False, False, True)):
    largest = max(float(jnp.max(jnp.abs(w))) for w in leaves_want)
    for g, w in zip(leaves_got, leaves_want):
      scale = largest if shared_scale else float(jnp.max(jnp.abs(w)))
      assert scale > 0
      np.testing.assert_allclose(
        np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=0, atol=tolerance * scale
      )


def test_bfloat16_computes_in_bfloat16_with_float32_params(tiny):
  config, variables, mixture, reference = tiny
  config = dataclasses.replace(config, dtype="bfloat16")
  shapes = jax.eval_shape(models.PressNet(config).init, jax.random.key(0), mixture)
  assert {p.dtype for p in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  outputs = _forward(variables, mixture, config=config)
  assert outputs["estimates"].dtype == jnp.float32
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(outputs))
  error = jnp.abs(outputs["estimates"] - reference["estimates"])
  scale = jnp.max(jnp.abs(reference["estimates"]))
  # bfloat16 keeps 8 bits of mantissa: close, but not float32-close.
  assert 1e-6 * scale < float(jnp.max(error)) < 0.05 * scale
