"""The PyTorch recipes of the corpus (see recipes.py for the API, the facts and the runner).

Each recipe trains on the CPU and logs, into one run `<run_dir>`:

- the common habit: `SummaryWriter(run_dir).add_histogram(name + "/histogram", param, epoch)`
  for every `named_parameters()` at the end of every epoch (steps 0..E-1, the
  first after one epoch);
- our summaries: `weights_pb(name, param, reference=initial[name],
  trainable=param.requires_grad)` through `writer.file_writer.add_summary`
  at step 0 (before training) and after every epoch (steps 1..E).

Layer names are the analysis's: a parameter `encoder.self_attn.in_proj_weight`
is layer `encoder.self_attn`, variable `in_proj_weight`.

Why the histograms' tags carry Keras's `/histogram` suffix (which
`split_tag` strips, so both name the same layer): in one run a tag belongs
to one plugin, fixed by its first event, in both of TensorBoard's loaders.
With the bare parameter name for both, the histograms of `add_histogram`
land in the series of our step-0 summary and are read as malformed
tb_weightdiff tensors (rank 2), or, the other way round, our summaries are
lost. Keras's `TensorBoard` callback avoids the clash the same way.

torch is imported inside the functions, so this module imports without it.
`RECIPES` is a list of `(name, train, description)`; recipes.py registers them.
"""

import collections
import copy

import numpy as np


def _common():
    import recipes  # pylint: disable=import-outside-toplevel

    return recipes


def _torch():
    import torch  # pylint: disable=import-outside-toplevel

    return torch


def _one_thread(train):
    """Runs a recipe on one intra-op thread, then restores the setting.

    The models are tiny: one thread trains them faster (two spin-wait when
    another process shares the cores), and the results then do not depend on
    the machine's core count.
    """

    def wrapped(run_dir, size="ci", seed=0):
        torch = _torch()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return train(run_dir, size=size, seed=seed)
        finally:
            torch.set_num_threads(threads)

    wrapped.__name__, wrapped.__doc__ = train.__name__, train.__doc__
    return wrapped


class TorchLogger:
    """Both kinds of summaries for every parameter of `model`, into `SummaryWriter(run_dir)`."""

    def __init__(self, run_dir, model):
        from torch.utils.tensorboard import SummaryWriter  # pylint: disable=import-outside-toplevel

        from tb_weightdiff.summary import weights_pb  # pylint: disable=import-outside-toplevel

        self._weights_pb = weights_pb
        self.model = model
        self.writer = SummaryWriter(run_dir)
        self.initial = {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters()}
        self._log_ours(0)

    def _log_ours(self, step):
        for name, p in self.model.named_parameters():
            summary = self._weights_pb(
                name, p.detach().cpu().numpy(), reference=self.initial[name], trainable=p.requires_grad
            )
            self.writer.file_writer.add_summary(summary, step)

    def epoch_end(self, epoch):
        for name, p in self.model.named_parameters():
            self.writer.add_histogram(name + "/histogram", p, epoch)
        self._log_ours(epoch + 1)

    def close(self):
        self.writer.flush()
        self.writer.close()


def _key(name):
    return _common().split_tag(name)


def _resolve(layer_key, facts):
    """The fact of the longest module path in `facts` that is `layer_key` or holds it."""
    best = None
    for prefix in facts:
        if layer_key == prefix or layer_key.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None:
        raise KeyError("no fact for layer %r" % layer_key)
    return facts[best]


def _torch_variables(model, facts, overrides):
    result = {}
    for name, p in model.named_parameters():
        key = _key(name)
        fact = overrides.get(name, _resolve(key[0], facts))
        result[key] = (fact, bool(p.requires_grad), int(p.numel()))
    return result


def fit_logged(model, optimizer, x, y, loss_fn, run_dir, facts, epochs, seed, batch_size=32, scheduler=None,
               train_mode=None, overrides=None, notes=None):
    """Trains `model` on `(x, y)` logged into `run_dir`, checks the truth, returns it.

    `train_mode()` puts the model in its training mode (default
    `model.train()`; a recipe that keeps a BatchNorm in eval mode says so
    there). `overrides`: `{parameter name: fact}`.
    """
    torch = _torch()
    common = _common()
    variables = _torch_variables(model, facts, overrides or {})
    set_mode = train_mode or model.train
    # The data loss's gradient on the first batch, then everything restored
    # (a training-mode forward moves BatchNorm's running statistics).
    state = copy.deepcopy(model.state_dict())
    set_mode()
    model.zero_grad(set_to_none=True)
    loss_fn(model(x[:batch_size]), y[:batch_size]).backward()
    grads = {
        _key(name): None if p.grad is None else p.grad.detach().cpu().numpy().copy()
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)

    logger = TorchLogger(run_dir, model)
    initial = {_key(name): value for name, value in logger.initial.items()}
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        set_mode()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        logger.epoch_end(epoch)
    logger.close()
    final = {_key(name): p.detach().cpu().numpy().copy() for name, p in model.named_parameters()}
    notes = {layer: [text] for layer, text in (notes or {}).items()}
    common.check_facts(variables, initial, final, grads, notes)
    truth = common.layer_truth(variables, notes)
    truth.initial, truth.final = initial, final
    return truth


def _tensors(*arrays):
    torch = _torch()
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def _images(name, seed, n):
    """Noisy gratings as NCHW float tensors and their orientations."""
    common = _common()
    x, theta = common.gratings(common.rng_for(name, seed), n)
    return _tensors(x.transpose(0, 3, 1, 2))[0], theta


# -- dead paths under weight decay --


def _dead_path_mlp(torch):
    nn = torch.nn

    class DeadPathMLP(nn.Module):
        """An MLP whose logits get a branch multiplied by 0 and a detached branch."""

        def __init__(self):
            super().__init__()
            self.hidden_1 = nn.Linear(16, 32)
            self.hidden_2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)
            self.dead_branch = nn.Linear(32, 4)
            self.detached_branch = nn.Linear(32, 4)

        def forward(self, x):
            h1 = torch.relu(self.hidden_1(x))
            h2 = torch.relu(self.hidden_2(h1))
            return self.head(h2) + 0.0 * self.dead_branch(h1) + self.detached_branch(h1).detach()

    return DeadPathMLP()


_DEAD_FACTS = {"hidden_1": "trains", "hidden_2": "trains", "head": "trains",
               "dead_branch": "dead_decay", "detached_branch": "frozen"}
_DETACHED_NOTE = ("Its output is detached: its parameters never get a gradient (grad stays None), "
                  "and torch's optimizers skip such parameters, weight decay included: it never changes.")


def _train_torch_dead_path_mlp(name, run_dir, size, seed, make_optimizer, notes=None):
    torch = _torch()
    common = _common()
    s = common._dead_path_sizes(size)  # pylint: disable=protected-access
    torch.manual_seed(seed)
    x, y = common._teacher_task(common.rng_for(name, seed), s["n"])  # pylint: disable=protected-access
    x, y = _tensors(x, y.astype(np.int64))
    model = _dead_path_mlp(torch)
    return fit_logged(model, make_optimizer(model.parameters()), x, y, torch.nn.functional.cross_entropy, run_dir,
                      _DEAD_FACTS, s["epochs"], seed, batch_size=s["batch_size"],
                      notes=dict({"detached_branch": _DETACHED_NOTE}, **(notes or {})))


@_one_thread
def train_torch_adamw_dead_path(run_dir, size="ci", seed=0):
    torch = _torch()
    return _train_torch_dead_path_mlp("torch_adamw_dead_path", run_dir, size, seed,
                                      lambda params: torch.optim.AdamW(params, lr=1e-3))


@_one_thread
def train_torch_adam_l2_dead_path(run_dir, size="ci", seed=0):
    torch = _torch()
    return _train_torch_dead_path_mlp(
        "torch_adam_l2_dead_path", run_dir, size, seed,
        lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4),
        notes={"dead_branch": "Its gradient is the coupled L2 term 1e-4*w only; Adam normalises it, so "
                              "each weight steps by about lr towards 0 (sign descent), not a rescaling."},
    )


def _dead_path_cnn(torch):
    nn = torch.nn

    class DeadPathCNN(nn.Module):
        """Two conv + BatchNorm blocks, pooled, a linear head; a x0 branch and a detached branch on the features."""

        def __init__(self):
            super().__init__()
            self.conv_1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn_1 = nn.BatchNorm2d(8)
            self.conv_2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
            self.bn_2 = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 4)
            self.dead_branch = nn.Linear(16, 4)
            self.detached_branch = nn.Linear(16, 4)

        def forward(self, x):
            h = torch.max_pool2d(torch.relu(self.bn_1(self.conv_1(x))), 2)
            h = torch.relu(self.bn_2(self.conv_2(h)))
            f = h.mean(dim=(2, 3))
            return self.fc(f) + 0.0 * self.dead_branch(f) + self.detached_branch(f).detach()

    return DeadPathCNN()


@_one_thread
def train_torch_sgd_wd_dead_path(run_dir, size="ci", seed=0):
    torch = _torch()
    common = _common()
    s = common.sizes(size, ci=dict(n=384, epochs=5), full=dict(n=8192, epochs=20))
    torch.manual_seed(seed)
    x, theta = _images("torch_sgd_wd_dead_path", seed, s["n"])
    y = _tensors(common.orientation_classes(theta).astype(np.int64))[0]
    model = _dead_path_cnn(torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    facts = {"conv_1": "trains", "bn_1": "trains", "conv_2": "trains", "bn_2": "trains", "fc": "trains",
             "dead_branch": "dead_decay", "detached_branch": "frozen"}
    return fit_logged(model, optimizer, x, y, torch.nn.functional.cross_entropy, run_dir, facts, s["epochs"], seed,
                      notes={"detached_branch": _DETACHED_NOTE})


# -- fine-tuning --

_CACHE = {}


def _finetune_sizes(size):
    return _common().sizes(size, ci=dict(pretrain_n=768, pretrain_epochs=4, n=384, head_epochs=3, tune_epochs=3),
                           full=dict(pretrain_n=8192, pretrain_epochs=10, n=8192, head_epochs=10, tune_epochs=10))


def _backbone(torch):
    nn = torch.nn
    return nn.Sequential(collections.OrderedDict(
        block1=nn.Sequential(collections.OrderedDict(
            conv=nn.Conv2d(3, 8, 3, padding=1, bias=False), bn=nn.BatchNorm2d(8), relu=nn.ReLU(),
            pool=nn.MaxPool2d(2))),
        block2=nn.Sequential(collections.OrderedDict(
            conv=nn.Conv2d(8, 16, 3, padding=1), relu=nn.ReLU(), pool=nn.MaxPool2d(2))),
        block3=nn.Sequential(collections.OrderedDict(
            conv=nn.Conv2d(16, 16, 3, padding=1, bias=False), bn=nn.BatchNorm2d(16), relu=nn.ReLU())),
    ))


def _finetune_net(torch, outputs):
    nn = torch.nn

    class FineTuneNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _backbone(torch)
            self.head = nn.Linear(16, outputs)

        def forward(self, x):
            return self.head(self.backbone(x).mean(dim=(2, 3)))

    return FineTuneNet()


def _pretrained_backbone(torch, size, seed):
    """The backbone's state after pre-training on 4-class orientation (not logged)."""
    key = ("backbone", size, seed)
    if key not in _CACHE:
        common = _common()
        s = _finetune_sizes(size)
        torch.manual_seed(seed)
        x, theta = _images("pretrain", seed, s["pretrain_n"])
        y = _tensors(common.orientation_classes(theta).astype(np.int64))[0]
        model = _finetune_net(torch, 4)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(s["pretrain_epochs"]):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 32):
                batch = order[start:start + 32]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
        _CACHE[key] = copy.deepcopy(model.backbone.state_dict())
    return _CACHE[key]


def _finetune_data(torch, size, seed):
    x, theta = _images("finetune", seed, _finetune_sizes(size)["n"])
    return x, _tensors((theta < np.pi / 2).astype(np.float32)[:, None])[0]


def _finetune_facts(top_block_trains):
    facts = {"backbone": "frozen", "backbone.block1.bn": "frozen_stats", "backbone.block3.bn": "frozen_stats",
             "head": "trains"}
    if top_block_trains:
        facts["backbone.block3"] = facts["backbone.block3.bn"] = "trains"
    return facts


def _frozen_backbone_model(torch, size, seed):
    """The pre-trained backbone with requires_grad=False, kept in eval mode (BatchNorm frozen), a new head."""
    torch.manual_seed(seed + 1)
    model = _finetune_net(torch, 1)
    model.backbone.load_state_dict(_pretrained_backbone(torch, size, seed))
    model.backbone.requires_grad_(False)

    def train_mode():
        model.train()
        model.backbone.eval()

    return model, train_mode


@_one_thread
def train_torch_finetune_head(run_dir, size="ci", seed=0):
    torch = _torch()
    model, train_mode = _frozen_backbone_model(torch, size, seed)
    x, y = _finetune_data(torch, size, seed)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    truth = fit_logged(model, optimizer, x, y, torch.nn.functional.binary_cross_entropy_with_logits, run_dir,
                       _finetune_facts(False), _finetune_sizes(size)["head_epochs"], seed + 1, train_mode=train_mode)
    _CACHE[("head", size, seed)] = copy.deepcopy(model.state_dict())
    return truth


@_one_thread
def train_torch_finetune_unfrozen_adam(run_dir, size="ci", seed=0):
    torch = _torch()
    model, train_mode = _frozen_backbone_model(torch, size, seed)
    x, y = _finetune_data(torch, size, seed)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    key = ("head", size, seed)
    if key not in _CACHE:  # the head phase of torch_finetune_head, unlogged
        optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed + 1)
        for _ in range(_finetune_sizes(size)["head_epochs"]):
            train_mode()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 32):
                batch = order[start:start + 32]
                optimizer.zero_grad()
                loss_fn(model(x[batch]), y[batch]).backward()
                optimizer.step()
        _CACHE[key] = copy.deepcopy(model.state_dict())
    model.load_state_dict(_CACHE[key])
    model.backbone.block3.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return fit_logged(model, optimizer, x, y, loss_fn, run_dir, _finetune_facts(True),
                      _finetune_sizes(size)["tune_epochs"], seed + 2, train_mode=train_mode)


# -- normalisation --


@_one_thread
def train_torch_batchnorm_layernorm(run_dir, size="ci", seed=0):
    torch = _torch()
    common = _common()
    nn = torch.nn
    s = common.sizes(size, ci=dict(n=384, epochs=5), full=dict(n=8192, epochs=20))
    torch.manual_seed(seed)

    class NormNet(nn.Module):
        def __init__(self):
            super().__init__()
            # No bias before a BatchNorm in train mode (it cancels it: the
            # gradient would be rounding noise); conv_2 feeds one in eval mode.
            self.conv_1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn_train = nn.BatchNorm2d(8)
            self.conv_2 = nn.Conv2d(8, 16, 3, padding=1)
            self.bn_eval = nn.BatchNorm2d(16)  # requires_grad=False and kept in eval mode
            self.conv_3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn_affine_frozen = nn.BatchNorm2d(16)  # requires_grad=False, left in train mode
            self.fc = nn.Linear(16, 32)
            self.layer_norm = nn.LayerNorm(32)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            h = torch.max_pool2d(torch.relu(self.bn_train(self.conv_1(x))), 2)
            h = torch.relu(self.bn_eval(self.conv_2(h)))
            h = torch.relu(self.bn_affine_frozen(self.conv_3(h)))
            h = torch.relu(self.layer_norm(self.fc(h.mean(dim=(2, 3)))))
            return self.head(h)

    model = NormNet()
    model.bn_eval.requires_grad_(False)
    model.bn_affine_frozen.requires_grad_(False)

    def train_mode():
        model.train()
        model.bn_eval.eval()

    x, theta = _images("torch_batchnorm_layernorm", seed, s["n"])
    y = _tensors(common.orientation_classes(theta).astype(np.int64))[0]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    facts = {"conv_1": "trains", "bn_train": "trains", "conv_2": "trains", "bn_eval": "frozen_stats",
             "conv_3": "trains", "bn_affine_frozen": "frozen", "fc": "trains", "layer_norm": "trains",
             "head": "trains"}
    truth = fit_logged(
        model, optimizer, x, y, torch.nn.functional.cross_entropy, run_dir, facts, s["epochs"], seed,
        train_mode=train_mode,
        notes={"bn_affine_frozen": "Left in train mode: its running statistics (buffers, which "
                                   "named_parameters() does not log) drift; its weight and bias never change."},
    )
    drift = float(model.bn_affine_frozen.running_mean.abs().max())
    truth.notes["bn_affine_frozen"] += " Largest |running_mean| after training: %.3g (0 before)." % drift
    return truth


# -- Embedding and attention --


@_one_thread
def train_torch_embedding_attention(run_dir, size="ci", seed=0):
    torch = _torch()
    common = _common()
    nn = torch.nn
    s = common.sizes(size, ci=dict(n=512, epochs=5), full=dict(n=16384, epochs=20))
    torch.manual_seed(seed)

    class TokenNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(common.VOCABULARY, 32)
            self.encoder = nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, tokens):
            return self.head(self.encoder(self.embedding(tokens)).mean(dim=1))

    model = TokenNet()
    tokens, label, used = common.token_task(common.rng_for("torch_embedding_attention", seed), s["n"])
    x, y = _tensors(tokens.astype(np.int64), label)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    truth = fit_logged(model, optimizer, x, y, torch.nn.functional.binary_cross_entropy_with_logits, run_dir,
                       {"embedding": "trains", "encoder": "trains", "head": "trains"}, s["epochs"], seed)
    key = ("embedding", "weight")
    truth.notes["embedding"] = common.embedding_note(truth.initial[key], truth.final[key], used)
    return truth


# -- schedules --


@_one_thread
def train_torch_cosine_schedule(run_dir, size="ci", seed=0):
    torch = _torch()
    common = _common()
    nn = torch.nn
    s = common.sizes(size, ci=dict(n=512, epochs=15), full=dict(n=16384, epochs=60))
    torch.manual_seed(seed)
    model = nn.Sequential(collections.OrderedDict(
        fc_1=nn.Linear(16, 64), relu_1=nn.ReLU(), fc_2=nn.Linear(64, 64), relu_2=nn.ReLU(), head=nn.Linear(64, 4)))
    x, y = common._teacher_task(common.rng_for("torch_cosine_schedule", seed), s["n"])  # pylint: disable=protected-access
    x, y = _tensors(x, y.astype(np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s["epochs"])
    return fit_logged(model, optimizer, x, y, torch.nn.functional.cross_entropy, run_dir,
                      {"fc_1": "trains", "fc_2": "trains", "head": "trains"}, s["epochs"], seed, scheduler=scheduler)


RECIPES = [
    ("torch_adamw_dead_path", train_torch_adamw_dead_path,
     "An MLP under torch.optim.AdamW(1e-3) (default weight_decay=0.01) whose logits get a branch multiplied "
     "by 0 (exactly zero gradient, shrunk by the decoupled decay: dead_decay) and a detached branch "
     "(grad None: skipped by the optimizer, decay included: frozen)."),
    ("torch_adam_l2_dead_path", train_torch_adam_l2_dead_path,
     "The same MLP under torch.optim.Adam(1e-3, weight_decay=1e-4): coupled L2, normalised by Adam."),
    ("torch_sgd_wd_dead_path", train_torch_sgd_wd_dead_path,
     "The ResNet recipe on a small CNN (conv, BatchNorm, conv, BatchNorm, linear): SGD(0.05, momentum 0.9, "
     "weight_decay=5e-4), with a x0 branch and a detached branch on the pooled features."),
    ("torch_finetune_head", train_torch_finetune_head,
     "A conv backbone (3 blocks, BatchNorm in the first and last) pre-trained (unlogged) on 4-class orientation; "
     "requires_grad=False and kept in eval mode, a new linear head trained with Adam(1e-3) over the head's "
     "parameters only."),
    ("torch_finetune_unfrozen_adam", train_torch_finetune_unfrozen_adam,
     "Continues torch_finetune_head: the top block (backbone.block3: conv, BatchNorm) unfrozen, Adam(1e-5) "
     "over the trainable parameters, the backbone still in eval mode (block3.bn trains its weight and bias, "
     "its running statistics stay); logged as its own run."),
    ("torch_batchnorm_layernorm", train_torch_batchnorm_layernorm,
     "A CNN with a BatchNorm2d in training, one with requires_grad=False kept in eval mode (frozen_stats), "
     "one with requires_grad=False left in train mode (its parameters never change; its running statistics, "
     "not logged, drift), and a LayerNorm; SGD(0.05, momentum 0.9)."),
    ("torch_embedding_attention", train_torch_embedding_attention,
     "nn.Embedding(1000, 32) of which only 64 ids occur, an nn.TransformerEncoderLayer (2 heads, no dropout), "
     "mean-pooled, a linear head; AdamW(1e-3). Everything trains; the never-looked-up rows get an all-zero "
     "gradient and AdamW's decay shrinks them (see the notes)."),
    ("torch_cosine_schedule", train_torch_cosine_schedule,
     "An MLP under SGD(0.05, momentum 0.9) with CosineAnnealingLR over all epochs (stepped per epoch): "
     "the late epochs move little."),
]
