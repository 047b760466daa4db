"""Build the teaching notebooks from this file (the reviewable source of truth).

    python notebooks/_build.py          # (re)write notebooks/*.ipynb, without outputs
    python notebooks/_build.py --check  # exit 1 if a stored notebook differs from this source

Each notebook runs top to bottom offline in well under a minute on the embedded default model
(:mod:`refcam.zoo`) or the toy zoo (:mod:`refcam.onnx.toy_models`); ``tests/test_notebooks.py``
executes them all with nbclient.  Code cells end with ``assert`` statements: a notebook that
states a theorem also checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(dedent(text).strip("\n"))


def code(text: str):
    return new_code_cell(dedent(text).strip("\n"))


SETUP = code("""
    import io

    import numpy as np
    from IPython.display import Image, display

    import refcam
    from refcam import viz

    np.set_printoptions(precision=4, suppress=True)


    def show(fig):
        \"\"\"Display a refcam.viz figure (headless Agg canvas, no pyplot) as a PNG.\"\"\"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi)
        display(Image(buf.getvalue()))
""")

# --------------------------------------------------------------------------------------------------
NB1 = [
    md(r"""
    # 1 · Saliency maps and guided backpropagation

    The oldest answer to *"which pixels matter for class $c$?"* is the gradient of the class score
    with respect to the input image (Simonyan, Vedaldi & Zisserman, 2014, *Deep Inside
    Convolutional Networks*, Sect. 3.1):

    $$ w = \frac{\partial S_c}{\partial I}\Big|_{I_0} \ \text{(eq. 4)}, \qquad
       M_{ij} = \max_{ch} |w_{h(i,j,ch)}| \ \text{(Sect. 3.1)} .$$

    Guided backpropagation (Springenberg et al., 2015, *Striving for Simplicity*, Fig. 1) and the
    deconvnet (Zeiler & Fergus, 2014) change **only the backward rule of ReLU**. With $z$ the
    ReLU's input and $g$ the gradient arriving from above:

    | rule | backward through $\mathrm{ReLU}(z)$ |
    |---|---|
    | plain gradient | $g \cdot [z > 0]$ |
    | deconvnet | $\mathrm{ReLU}(g)$ |
    | guided backprop | $\mathrm{ReLU}(g) \cdot [z > 0]$ |

    To *see* the chain rule we build a tiny CNN in NumPy with a hand-written backward pass:
    conv 3×3 → ReLU → global average pooling → linear, with filters designed by hand (a "red"
    and a "blue" detector), on a synthetic scene. refcam's gradient floor (`refcam.autodiff`)
    builds the same backward pass as an ONNX graph for any model, with the same three ReLU rules.
    """),
    SETUP,
    code("""
    rng = np.random.default_rng(0)
    H = W = 32
    scene = 0.45 + 0.03 * rng.standard_normal((3, H, W))          # grey, noisy background
    square = np.zeros((H, W), bool); square[4:14, 17:27] = True
    scene[:, square] = np.array([0.9, 0.15, 0.1])[:, None]          # the red square (the object)
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 23) ** 2 + (xx - 9) ** 2 <= 12
    scene[:, disc] = np.array([0.1, 0.15, 0.9])[:, None]             # a blue disc (the other class)
    scene = np.clip(scene, 0, 1)
    x = scene[None]                                                  # (N=1, C=3, H, W)
    picture = scene.transpose(1, 2, 0)                               # (H, W, 3) for display

    # conv 3x3 "same": filter 0 = redness, filter 1 = blueness (colour opponency, spatial average)
    Wc = np.zeros((2, 3, 3, 3))
    Wc[0] = np.array([1.0, -0.5, -0.5])[:, None, None] / 9
    Wc[1] = np.array([-0.5, -0.5, 1.0])[:, None, None] / 9
    bc = np.array([-0.15, -0.15])
    Wfc = np.array([[40.0, -10.0], [-10.0, 40.0]])    # class 0 "red thing", class 1 "blue thing"
    bfc = np.zeros(2)
    classes = ["red thing", "blue thing"]
    """),
    md(r"""
    ## Forward and backward by hand

    Forward: $z = \mathrm{conv}(I)$, $A = \mathrm{ReLU}(z)$, $F_k = \frac1Z\sum_{ij} A^k_{ij}$,
    $y = W F + b$. Backward for class $c$ (chain rule, one factor per layer):

    $$\frac{\partial y^c}{\partial F_k} = W_{ck},\quad
      \frac{\partial y^c}{\partial A^k_{ij}} = \frac{W_{ck}}{Z},\quad
      \frac{\partial y^c}{\partial z} = \text{ReLU rule}\Big(\frac{\partial y^c}{\partial A}, z\Big),\quad
      \frac{\partial y^c}{\partial I} = \mathrm{conv}^\top\Big(\frac{\partial y^c}{\partial z}\Big).$$
    """),
    code("""
    from numpy.lib.stride_tricks import sliding_window_view

    def conv_forward(x):
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        patches = sliding_window_view(xp, (3, 3), axis=(2, 3))          # (N, C, H, W, 3, 3)
        return np.einsum("nchwij,kcij->nkhw", patches, Wc) + bc[None, :, None, None]

    def conv_backward(gz):
        # transpose of the convolution: every output position sends g * w back to its 3x3 window
        n, _, h, w = gz.shape
        gxp = np.zeros((n, 3, h + 2, w + 2))
        contrib = np.einsum("nkhw,kcij->ncijhw", gz, Wc)
        for i in range(3):            # loop over the 9 kernel offsets, not over pixels
            for j in range(3):
                gxp[:, :, i:i + h, j:j + w] += contrib[:, :, i, j]
        return gxp[:, :, 1:-1, 1:-1]

    RELU_RULES = {
        "plain": lambda g, z: g * (z > 0),
        "deconvnet": lambda g, z: np.maximum(g, 0),
        "guided": lambda g, z: np.maximum(g, 0) * (z > 0),
    }

    def forward(x):
        z = conv_forward(x)
        A = np.maximum(z, 0)
        y = refcam.gap(A) @ Wfc.T + bfc            # refcam.gap = (1/Z) sum_ij A^k_ij
        return z, A, y

    def input_gradient(x, c, rule="plain"):
        z, A, _ = forward(x)
        Z = A.shape[2] * A.shape[3]
        gA = np.broadcast_to((Wfc[c] / Z)[None, :, None, None], A.shape)  # dy^c/dA = w^c / Z
        return conv_backward(RELU_RULES[rule](gA, z))

    z, A, y = forward(x)
    print("logits:", y[0], "->", classes[int(y[0].argmax())])
    """),
    md(r"""
    ## Check the hand-written gradient against finite differences

    A reference implementation never trusts a derivative it has not checked. Central differences
    $\frac{y(I + h e) - y(I - h e)}{2h}$ in float64 on random coordinates:
    """),
    code("""
    c = 0
    g = input_gradient(x, c)
    h = 1e-6
    idx = [tuple(rng.integers(0, s) for s in x.shape) for _ in range(25)]
    fd = []
    for k in idx:
        e = np.zeros_like(x); e[k] = h
        fd.append((forward(x + e)[2][0, c] - forward(x - e)[2][0, c]) / (2 * h))
    err = np.max(np.abs(np.array(fd) - np.array([g[k] for k in idx])))
    print(f"max |finite difference - analytic| over 25 coordinates: {err:.2e}")
    assert err < 1e-7
    """),
    md(r"""
    ## Saliency, deconvnet and guided backprop

    `refcam.saliency(g)` is Simonyan's $\max_{ch}|g|$ (`reduce="max-abs"`). For the class
    "red thing" the evidence should sit on the red square and nowhere else.
    """),
    code("""
    from scipy.ndimage import binary_dilation

    grads = {rule: input_gradient(x, c=0, rule=rule) for rule in RELU_RULES}
    # a 3x3 filter fires up to 1 px beyond an object and its window reaches 1 px further
    near_square = binary_dilation(square, np.ones((5, 5)))
    near_disc = binary_dilation(disc, np.ones((5, 5)))
    for rule, g in grads.items():
        s = refcam.saliency(g)[0]                            # (H, W)
        print(f"{rule:9s}: saliency mass on the square {s[near_square].sum() / s.sum():.3f}, "
              f"on the disc {s[near_disc].sum() / s.sum():.3f}")
    sal = refcam.saliency(grads["plain"])
    assert sal[0][near_square | near_disc].sum() / sal[0].sum() > 0.999
    guided = refcam.saliency(grads["guided"])[0]
    assert guided[near_square].sum() / guided.sum() > 0.999

    fig = viz.saliency_grid(picture, {f"{r} (red thing)": g[0] for r, g in grads.items()}, mode="abs")
    show(fig)
    """),
    md(r"""
    On this network the three rules coincide wherever the upstream gradient $W_{ck}/Z$ is positive
    (the red filter for the red class); they differ for channels with negative weight. The blue
    channel's weight is $-10$ for the red class: plain backprop passes that negative evidence
    through the disc's active ReLUs, guided backprop cuts it. The deconvnet ignores $z$: it sends
    the positive upstream gradient back through *every* position, so it spreads over the whole
    image — it shows what the filter looks for rather than where it fired (hence its low share
    on the square above).
    """),
    code("""
    on_disc = sal[0][near_disc].sum()
    guided_on_disc = refcam.saliency(grads["guided"])[0][near_disc].sum()
    print(f"saliency on the blue disc: plain {on_disc:.4f}, guided {guided_on_disc:.4f}")
    assert on_disc > 0 and guided_on_disc == 0.0
    # the deconvnet ignores z: where the upstream gradient is positive it passes everywhere
    assert np.allclose(grads["deconvnet"][:, :, 0, 0], conv_backward(
        np.broadcast_to((np.maximum(Wfc[0], 0) / (H * W))[None, :, None, None], A.shape))[:, :, 0, 0])
    """),
    md(r"""
    ## Guided Grad-CAM

    Selvaraju et al. (2017, Sect. 3) multiply guided backprop by the (upsampled) Grad-CAM map,
    $G^c \odot L^c$: `refcam.guided_gradcam`. Here the feature map already has the input's size;
    on this GAP → linear head Grad-CAM is $\mathrm{ReLU}(\mathrm{CAM})/Z$ (notebook 3).
    """),
    code("""
    Z = H * W
    gradients_A = np.broadcast_to((Wfc[0] / Z)[None, :, None, None], A.shape)
    L = refcam.gradcam(A, gradients_A)                                  # (1, H, W)
    ggc = refcam.guided_gradcam(grads["guided"], L)                    # (1, 3, H, W)
    assert np.allclose(L, refcam.relu(refcam.cam(A, Wfc[[0]])) / Z)
    show(viz.saliency_grid(picture, {"guided backprop": grads["guided"][0], "guided Grad-CAM": ggc[0]}))
    """),
    md(r"""
    ## The same on a real network: `refcam.autodiff`

    Everything above was written by hand for one tiny network. For any ONNX model the gradient
    floor `refcam.autodiff` builds the backward (VJP) graph — the chain rule above, op by op, in
    standard ONNX ops — with the same three ReLU rules (`rules="plain" | "guided" | "deconvnet"`;
    EfficientNet's ReLU6, a `Clip`, gets the guided rule $\mathrm{ReLU}(g)\,[0 < z < 6]$).
    Here: EfficientNet-Lite0 on the cat, a 224×224×3 input gradient in about a second.
    """),
    code("""
    from refcam import zoo
    from refcam.autodiff import gradients
    from refcam.onnx import Model

    model = Model(zoo.efficientnet_lite0())
    xc, pics = zoo.preprocess(zoo.sample_image_path("chelsea"), return_images=True)
    runs = {rule: gradients(model, xc, wrt="input", rules=rule) for rule in ("plain", "guided", "deconvnet")}
    g_in = {rule: r.gradients[model.input_name][:, 0] for rule, r in runs.items()}  # (1, 3, 224, 224)
    cls = int(runs["plain"].classes[0, 0])
    print("explained class:", cls, zoo.imagenet_classes()[cls])
    """),
    md(r"""
    Check the plain gradient with directional finite differences in the model's float32:
    $\frac{y(x + h d) - y(x - h d)}{2h} \approx \langle \nabla y, d \rangle$ for random unit
    directions $d$, with the error measured against $\lVert \nabla y \rVert$ (the largest possible
    directional derivative).
    """),
    code("""
    g64 = g_in["plain"].astype(np.float64)
    def score(z):
        return model.run(z.astype(np.float32))[model.output_name][0, cls].astype(np.float64)
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(xc.shape)
        d /= np.linalg.norm(d)
        h = 0.03
        fd = (score(xc + h * d) - score(xc - h * d)) / (2 * h)
        rel = abs(fd - (g64 * d).sum()) / np.linalg.norm(g64)
        print(f"direction {seed}: finite difference {fd:+.5f}, <grad, d> {(g64 * d).sum():+.5f}, error/|grad| {rel:.1e}")
        assert rel < 1e-3
    show(viz.saliency_grid(pics[0], {rule: g[0] for rule, g in g_in.items()}, suptitle="EfficientNet-Lite0"))
    """),
    md(r"""
    The pattern of the toy network repeats at scale: guided backprop keeps the fine structure of
    the eyes and the nose; the plain gradient is noisier; the deconvnet, which ignores where the
    forward pass was active, mostly shows the network's stride-2 sampling grid rather than the cat.
    """),
]

# --------------------------------------------------------------------------------------------------
NB2 = [
    md(r"""
    # 2 · CAM and global average pooling

    Zhou, Khosla, Lapedriza, Oliva & Torralba (2016), *Learning Deep Features for Discriminative
    Localization*, Sect. 2. A network that ends in **global average pooling (GAP) followed by one
    linear layer** computes, for class $c$,

    $$ F_k = \frac{1}{Z}\sum_{i,j} A^k_{ij}, \qquad y^c = \sum_k w^c_k F_k + b_c, $$

    with $A^k$ the $k$-th feature map of the last convolutional layer and $Z$ the number of spatial
    positions. Exchange the two sums:

    $$ y^c = \sum_k w^c_k \frac{1}{Z}\sum_{i,j} A^k_{ij} + b_c
           = \frac{1}{Z}\sum_{i,j}\underbrace{\sum_k w^c_k A^k_{ij}}_{M_c(i,j)} + b_c . $$

    $M_c = \sum_k w^c_k A^k$ is the **class activation map**: the logit is exactly the spatial mean
    of the map plus the bias, so $M_c(i,j)$ says how much position $(i,j)$ contributes to $y^c$.
    Zhou et al. write $F_k$ as a plain *sum* over positions (the $1/Z$ dropped) and omit the bias,
    so in the paper $S_c = \sum_{x,y} M_c(x,y)$; with a real GAP layer (a mean) the identity reads
    $y^c = \mathrm{mean}_{ij}\, M_c(i,j) + b_c$, which is what we check below. CAM has no ReLU in the
    paper: `refcam.cam(..., relu=False)`.

    The embedded default model, EfficientNet-Lite0, has exactly this head: `head.relu`
    $(N, 1280, 7, 7)$ → GlobalAveragePool → Gemm.
    """),
    SETUP,
    code("""
    from refcam import zoo
    from refcam.onnx import Model

    model = Model(zoo.efficientnet_lite0())
    x, pictures = zoo.preprocess([zoo.sample_image_path("chelsea"), zoo.sample_image_path("coffee")],
                                 return_images=True)
    layer = model.default_layer()
    print("default layer:", layer.name, layer.shape, "| output:", model.output_name)
    fw = model.forward(x, [layer])
    A = fw.activations[layer.name].astype(np.float64)        # (2, 1280, 7, 7)
    logits = fw.outputs.astype(np.float64)                   # (2, 1000)
    for row in zoo.decode_predictions(logits, 3):
        print(row)
    """),
    md(r"""
    ## The head's weights, read from the graph

    `Model.linear_head(layer)` follows GAP → Flatten → Gemm and returns $W$ $(1000, 1280)$ and $b$.
    Check $y = W\,\mathrm{GAP}(A) + b$ against the model's own logits.
    """),
    code("""
    head = model.linear_head(layer)
    Wfc, bfc = head.weight.astype(np.float64), head.bias.astype(np.float64)
    F = refcam.gap(A)                                        # (2, 1280)
    assert np.allclose(F @ Wfc.T + bfc, logits, atol=1e-3)
    print("max |W GAP(A) + b - logits| =", np.abs(F @ Wfc.T + bfc - logits).max())
    """),
    md(r"""
    ## CAM, and the identity $y^c = \mathrm{mean}_{ij} M_c(i,j) + b_c$
    """),
    code("""
    top1 = logits.argmax(axis=1)                             # tiger cat (282), espresso (967)
    M = refcam.cam(A, Wfc[top1])                             # class_weights: row w^c per sample
    Z = A.shape[2] * A.shape[3]
    lhs = logits[np.arange(2), top1]
    rhs = M.reshape(2, -1).mean(axis=1) + bfc[top1]
    print("y^c:", lhs, " mean(M_c) + b_c:", rhs)
    assert np.allclose(lhs, rhs, atol=1e-3)
    # refcam.explain computes the same map from the model alone
    e = refcam.explain(model, x, "cam")
    assert np.allclose(e.maps, M, atol=1e-4) and (e.targets.ravel() == top1).all()
    """),
    md(r"""
    ## Pictures

    The 7×7 map is upsampled bilinearly (half-pixel centres, `refcam.upsample(..., "linear")`)
    and drawn over the picture the model saw. The same activations explain *any* class: only
    the weight row $w^c$ changes.
    """),
    code("""
    names = zoo.imagenet_classes()
    for i in range(2):
        maps = {f"{names[c]} ({c})": refcam.cam(A[i:i + 1], Wfc[[c]]) for c in (top1[i], 282, 967)}
        show(viz.compare_grid(pictures[i], maps, suptitle="CAM for three classes"))
    """),
    md(r"""
    ## What is the map's scale?

    CAM values are in logit units per position: the map *sums* to $Z\,(y^c - b_c)$. Normalising
    for display (`refcam.normalize`, min–max) throws this away; keep the raw maps when you compare
    implementations (notebook 5).
    """),
    code("""
    assert np.allclose(M.reshape(2, -1).sum(axis=1), Z * (lhs - bfc[top1]), rtol=1e-5)
    n = refcam.normalize(M)
    print("normalised range per sample:", n.reshape(2, -1).min(axis=1), n.reshape(2, -1).max(axis=1))
    """),
]

# --------------------------------------------------------------------------------------------------
NB3 = [
    md(r"""
    # 3 · Grad-CAM and Grad-CAM++, step by step

    **Grad-CAM** (Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, 2017, Eq. 1–2) replaces CAM's
    weights by spatially averaged gradients, so it works for any head:

    $$ \alpha^c_k = \frac{1}{Z}\sum_{i,j}\frac{\partial y^c}{\partial A^k_{ij}}, \qquad
       L^c_{\text{Grad-CAM}} = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big). $$

    **Theorem (Selvaraju et al., Sect. 3.1).** On a GAP → linear head,
    $y^c = \sum_k w^c_k \frac1Z\sum_{ij}A^k_{ij} + b_c$, so
    $\frac{\partial y^c}{\partial A^k_{ij}} = \frac{w^c_k}{Z}$ at every position,
    $\alpha^c_k = \frac1Z\sum_{ij}\frac{w^c_k}{Z} = \frac{w^c_k}{Z}$, and

    $$ L^c_{\text{Grad-CAM}} = \mathrm{ReLU}\Big(\sum_k \frac{w^c_k}{Z} A^k\Big)
       = \frac{1}{Z}\,\mathrm{ReLU}(M_c) . $$

    Grad-CAM *is* CAM (after ReLU) divided by $Z$. We check it on EfficientNet-Lite0, with the
    gradient in closed form — a legitimate shortcut for this head; the gradient floor
    (`refcam.autodiff`) computes it for any graph (see the last section).
    """),
    SETUP,
    code("""
    from refcam import zoo
    from refcam.onnx import Model

    model = Model(zoo.efficientnet_lite0())
    x, pictures = zoo.preprocess(zoo.sample_image_path("chelsea"), return_images=True)
    layer = model.default_layer()
    fw = model.forward(x, [layer])
    A = fw.activations[layer.name].astype(np.float64)             # (1, 1280, 7, 7)
    head = model.linear_head(layer)
    Wfc, bfc = head.weight.astype(np.float64), head.bias.astype(np.float64)
    c = int(fw.outputs.argmax())
    N, K, Hf, Wf = A.shape
    Z = Hf * Wf
    print("class", c, zoo.imagenet_classes()[c], "| Z =", Z)
    """),
    md(r"""
    ## Step 1 — the gradient $\partial y^c / \partial A$

    Closed form $w^c_k / Z$, broadcast over space. Check it with finite differences through the
    ONNX *head* model (`Model.head(layer)`: the graph cut at `head.relu`, so perturbed
    activations can be fed back in).
    """),
    code("""
    G = np.broadcast_to((Wfc[c] / Z)[None, :, None, None], A.shape)   # (1, K, 7, 7)
    head_model = model.head(layer)
    def y_of(acts):
        return head_model.run(acts.astype(np.float32))[head_model.output_name][:, c].astype(np.float64)
    rng = np.random.default_rng(0)
    h = 0.05                                     # the head is linear: any step is exact up to rounding
    for _ in range(5):
        k = (0, int(rng.integers(K)), int(rng.integers(Hf)), int(rng.integers(Wf)))
        e = np.zeros_like(A); e[k] = h
        fd = (y_of(A + e) - y_of(A - e))[0] / (2 * h)
        print(f"dy/dA{k[1:]}: finite difference {fd:+.6f}  closed form {G[k]:+.6f}")
        assert abs(fd - G[k]) < 2e-4
    """),
    md(r"""
    ## Step 2 — the weights $\alpha^c_k$ and the map
    """),
    code("""
    alpha = G.mean(axis=(2, 3))                           # (1/Z) sum_ij dy/dA
    assert np.allclose(alpha, refcam.gradcam_weights(A, G)) and np.allclose(alpha, Wfc[c] / Z)
    L = refcam.relu(refcam.weighted_sum(A, alpha))        # ReLU(sum_k alpha_k A^k)
    assert np.array_equal(L, refcam.gradcam(A, G))
    """),
    md(r"""
    ## Step 3 — the theorem: Grad-CAM = ReLU(CAM) / Z
    """),
    code("""
    M = refcam.cam(A, Wfc[[c]])
    err = np.abs(refcam.gradcam(A, G) - refcam.relu(M) / Z).max()
    print(f"max |Grad-CAM - ReLU(CAM)/Z| = {err:.2e}  (map scale {np.abs(M).max() / Z:.3f})")
    assert err < 1e-12
    show(viz.compare_grid(pictures[0], {"CAM": M, "Grad-CAM": refcam.gradcam(A, G)},
                             suptitle="same picture after min-max display scaling"))
    """),
    md(r"""
    ## Grad-CAM++

    Chattopadhay, Sarkar, Howlader & Balasubramanian (2018, arXiv:1710.11063), eqs. 19, 5 and 20,
    with $g = \partial S^c/\partial A^k_{ij}$ (the exponential output $Y^c=\exp S^c$ only rescales):

    $$ \alpha^{kc}_{ij} = \frac{g_{ij}^2}{2g_{ij}^2 + \sum_{a,b}A^k_{ab}\,g_{ij}^3}, \qquad
       w^c_k = \sum_{i,j}\alpha^{kc}_{ij}\,\mathrm{ReLU}(g_{ij}), \qquad
       L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big) . $$

    On the GAP head $g_{ij} = w^c_k/Z =: g_k$ is constant, so for $g_k \ne 0$
    $\alpha^{kc} = \frac{1}{2 + g_k S_k}$ with $S_k = \sum_{ab}A^k_{ab}$, and
    $w^c_k = Z\,\frac{\mathrm{ReLU}(g_k)}{2 + g_k S_k}$: channels with negative class weight drop
    out, positive ones are damped by how much they already fire. Division guard: where the
    denominator is 0 (e.g. $g_k = 0$) $\alpha = 0$ (refcam masks, no additive eps).
    """),
    code("""
    gk = Wfc[c] / Z
    S = A.sum(axis=(2, 3))[0]
    den = 2 + gk * S
    w_hand = np.where(den != 0, Z * np.maximum(gk, 0) / np.where(den != 0, den, 1), 0.0)
    w_ref = refcam.gradcampp_weights(A, G)[0]
    print("channels with w > 0:", int((w_ref > 0).sum()), "of", K)
    assert np.allclose(w_hand, w_ref, rtol=1e-12, atol=0)
    Lpp = refcam.gradcampp(A, G)
    assert np.allclose(Lpp, refcam.relu(refcam.weighted_sum(A, w_ref[None])))
    show(viz.compare_grid(pictures[0], {"Grad-CAM": L, "Grad-CAM++": Lpp}))
    """),
    md(r"""
    ## The autodiff path

    The gradient floor computes $\partial y^c/\partial A$ from an ONNX backward graph of the whole
    model (`refcam.autodiff.gradients`), without knowing that the head is GAP → linear. On this
    head it must reproduce the closed form $w^c_k/Z$, and so the theorem. Once the gradient methods
    are registered, `refcam.explain(model, x, "gradcam")` (and `refcam explain` on the command
    line, whose default then becomes Grad-CAM) goes through the same path; the last lines run
    when this installation has them.
    """),
    code("""
    from refcam.autodiff import gradients

    r = gradients(model, x, wrt=layer.name, target=c)
    G_ad = r.gradients[layer.name][:, 0].astype(np.float64)          # (1, K, 7, 7), target axis dropped
    err = np.abs(G_ad - G).max()
    print(f"max |autodiff - w^c/Z| = {err:.1e}  (gradient scale {np.abs(G).max():.1e})")
    assert err < 1e-6 * np.abs(G).max()
    L_ad = refcam.gradcam(r.activations[layer.name].astype(np.float64), G_ad)
    assert np.allclose(L_ad, refcam.relu(M) / Z, rtol=1e-5, atol=1e-6 * np.abs(M).max() / Z)

    from refcam.methods import METHODS
    if "gradcam" in METHODS:
        e = refcam.explain(model, x, "gradcam", layer=layer.name, target=c)
        assert np.allclose(e.maps, refcam.relu(M) / Z, rtol=1e-4, atol=1e-4 * np.abs(M).max() / Z)
        print("refcam.explain(..., 'gradcam') agrees")
    """),
]

# --------------------------------------------------------------------------------------------------
NB4 = [
    md(r"""
    # 4 · Score-CAM and the gradient-free family

    Gradients can be noisy or saturated; the gradient-free methods weigh each channel by what the
    model *does* when it sees that channel, or loses it.

    **Score-CAM** (Wang et al., 2020, Def. 4–5, eqs. 6–10). Each activation map is upsampled to
    the input size and min–max normalised into a mask $H^k = s(\mathrm{Up}(A^k))$ (eqs. 7–8); the
    input is masked, $X \circ H^k$, and

    $$ \alpha^c_k = C(A^k) = f^c(X\circ H^k) - f^c(X_b), \qquad
       L^c = \mathrm{ReLU}\Big(\sum_k \alpha^c_k A^k\Big). $$

    (The paper's text scores with the post-softmax probability, its Algorithm 1 with logits and a
    softmax over channels; refcam exposes both as options — see `refcam methods scorecam`.)

    **Ablation-CAM** (Desai & Ramaswamy, 2020): $w^c_k = \frac{y^c - y^c_k}{y^c}$ with $y^c_k$ the
    score when channel $k$ is set to zero. **Eigen-CAM** (Muhammad & Yeasin, 2020): project the
    activations on their first principal direction — no class at all.

    First Score-CAM by hand on a toy model of the zoo (6 channels, so 6 masked forward passes),
    then the family on the real cat.
    """),
    SETUP,
    code("""
    from refcam.onnx import Model
    from refcam.onnx.toy_models import cam_net

    toy = Model(cam_net())                     # conv -> relu -> conv -> relu ("features") -> GAP -> Gemm
    x = np.random.default_rng(1).random((1, 3, 12, 12), dtype=np.float32)
    fw = toy.forward(x, ["features"])
    A = fw.activations["features"]             # (1, 6, 12, 12)
    c = int(fw.outputs.argmax())
    print("activations", A.shape, "target class", c)
    """),
    md(r"""
    ## Step 1 — masks $H^k$ (`refcam.scorecam_masks`)

    Upsample (bilinear, half-pixel) then min–max each channel to $[0, 1]$; a constant channel
    gives a zero mask (explicit guard).
    """),
    code("""
    H_k = refcam.scorecam_masks(A, (12, 12))                       # (1, K, 12, 12)
    up = refcam.upsample(A, (12, 12))
    lo = up.min(axis=(2, 3), keepdims=True); hi = up.max(axis=(2, 3), keepdims=True)
    by_hand = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
    assert np.allclose(H_k, by_hand, atol=1e-6)
    print("mask ranges:", H_k.min(axis=(2, 3)).ravel(), H_k.max(axis=(2, 3)).ravel())
    """),
    md(r"""
    ## Step 2 — one forward pass per mask, then the weights and the map

    refcam's default score is the class probability and the baseline is omitted
    ($f^c(X_b)$ = 0, as in the paper's released code); see `refcam methods scorecam`.
    """),
    code("""
    masked = x[:, None] * H_k[:, :, None]                             # (1, K, 3, 12, 12)
    logits_k = toy.run(masked[0])[toy.output_name].astype(np.float64)  # (K, classes)
    p = np.exp(logits_k - logits_k.max(axis=1, keepdims=True)); p /= p.sum(axis=1, keepdims=True)
    scores = p[:, c][None]                                            # (1, K): f^c(X o H^k)
    L = refcam.scorecam(A, scores)                                    # ReLU(sum_k alpha_k A^k)
    e = refcam.explain(toy, x, "scorecam", target=c)
    print("max |hand - explain| =", np.abs(L - e.maps).max())
    assert np.allclose(L, e.maps, rtol=1e-5, atol=1e-6)
    """),
    md(r"""
    ## The family on a real photo

    On EfficientNet-Lite0 ($K = 1280$ channels at `head.relu`) Score-CAM needs 1280 forward passes
    of the whole network (about half a minute here: try `refcam explain -m scorecam`).
    Ablation-CAM needs 1280 passes of the *head* only (the graph cut after the layer) and
    Eigen-CAM one SVD, so both run in seconds.
    """),
    code("""
    from refcam import zoo

    model = Model(zoo.efficientnet_lite0())
    xc, pics = zoo.preprocess(zoo.sample_image_path("chelsea"), return_images=True)
    maps = {m: refcam.explain(model, xc, m, progress=False).maps for m in ("cam", "ablationcam", "eigencam")}
    show(viz.compare_grid(pics[0], maps, suptitle="gradient-free maps of the cat"))
    """),
    md(r"""
    ## How similar are they?

    Rank agreement (Spearman correlation of the 49 values) between the raw maps. CAM and
    Ablation-CAM are built from the same head and agree closely. Eigen-CAM is class-agnostic: it
    agrees here because the cat dominates the activations' first principal direction, which
    nothing guarantees (try the coffee cup with target "cup"). Its sign is fixed by refcam's rule
    (`sign="sum"`: the projection sums to a non-negative value), since an SVD's sign is arbitrary.
    """),
    code("""
    from scipy.stats import spearmanr

    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rho = spearmanr(maps[a].ravel(), maps[b].ravel())[0]
            print(f"{a:12s} vs {b:12s}: Spearman {rho:+.3f}")
    assert spearmanr(maps["cam"].ravel(), maps["ablationcam"].ravel())[0] > 0.8
    assert maps["eigencam"].sum() >= 0
    """),
]

# --------------------------------------------------------------------------------------------------
NB5 = [
    md(r"""
    # 5 · Validating another implementation with refcam

    refcam exists so that other CAM code can be checked against it. The recipe:

    1. feed **the same arrays** (activations $A$, gradients $G$, scores) to your implementation and
       to `refcam.math`; compare the **raw maps** first (formula errors show up here);
    2. then compare post-processing (ReLU placement, min–max eps, resizing mode) separately:
       most disagreements between libraries live there, not in the formula;
    3. use exact tolerances that follow from the dtype (float64: ~1e-12 relative), and explain
       every difference you accept.

    Below: a typical third-party Grad-CAM, written the way many libraries do (per-image loop,
    ReLU, min-max with `+1e-7`, bilinear resize), and two subtly wrong variants.
    """),
    SETUP,
    code("""
    rng = np.random.default_rng(0)
    A = np.maximum(rng.standard_normal((3, 8, 7, 7)), 0)        # post-ReLU activations, N=3, K=8
    G = rng.standard_normal((3, 8, 7, 7)) * 0.1                 # gradients dy^c/dA

    def their_gradcam(A, G, size=(28, 28)):
        out = []
        for a, g in zip(A, G):                                  # one image at a time
            w = g.mean(axis=(1, 2))                             # alpha_k = mean_ij g
            cam = np.maximum((w[:, None, None] * a).sum(0), 0)
            cam = cam - cam.min()
            cam = cam / (cam.max() + 1e-7)
            out.append(refcam.upsample(cam[None], size, "linear")[0])   # cv2.INTER_LINEAR equivalent
        return np.stack(out)

    def buggy_sum(A, G, size=(28, 28)):                         # alpha = SUM instead of mean
        w = G.sum(axis=(2, 3))
        cam = np.maximum(np.einsum("nk,nkij->nij", w, A), 0)
        cam = (cam - cam.min()) / (cam.max() - cam.min())      # batch-wide min-max!
        return refcam.upsample(cam, size, "linear")

    def buggy_corners(A, G, size=(28, 28)):                     # align_corners=True resize
        return refcam.upsample(refcam.normalize(refcam.gradcam(A, G)), size, "linear-align-corners")
    """),
    md(r"""
    ## Step 1 — raw maps against `refcam.gradcam`

    Strip the post-processing off and compare the formula alone.
    """),
    code("""
    ref_raw = refcam.gradcam(A, G)                              # ReLU(sum_k alpha_k A^k), (N, 7, 7)
    their_raw = np.stack([np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(0), 0) for a, g in zip(A, G)])
    print("raw max abs difference:", np.abs(their_raw - ref_raw).max())
    assert np.allclose(their_raw, ref_raw, rtol=1e-12, atol=1e-15)
    """),
    md(r"""
    ## Step 2 — the post-processing, reproduced with refcam's building blocks

    `refcam.normalize(maps, "minmax", eps=1e-7)` is the per-sample $(m - \min)/(\max - \min + \epsilon)$;
    `refcam.upsample(..., "linear")` is bilinear with half-pixel centres (= OpenCV `INTER_LINEAR`
    = torch `align_corners=False`). Their order matters: normalise-then-resize here.
    """),
    code("""
    ref_pp = refcam.upsample(refcam.normalize(ref_raw, "minmax", eps=1e-7), (28, 28), "linear")
    diff = np.abs(their_gradcam(A, G) - ref_pp).max()
    print(f"post-processed max abs difference: {diff:.1e}")
    assert diff < 1e-12
    """),
    md(r"""
    ## Step 3 — the bugs are caught, with a diagnosis

    Sum-instead-of-mean only rescales each map by $Z$ (invisible after per-image min–max!) but the
    batch-wide min–max is not: the comparison must be **per sample**. The `align_corners` resize
    moves every sample position by a fraction of a pixel — up to ~0.3 on a [0, 1] map.
    """),
    code("""
    for name, impl in [("sum + batch min-max", buggy_sum), ("align_corners resize", buggy_corners)]:
        d = np.abs(impl(A, G) - ref_pp).reshape(3, -1).max(axis=1)
        print(f"{name:22s} per-sample max |diff|: {d}")
        assert d.max() > 1e-3
    # the sum/mean factor alone is invisible after min-max: exactly why step 1 compares raw maps
    w_sum = refcam.weighted_sum(A, G.sum(axis=(2, 3)))
    assert np.allclose(refcam.normalize(refcam.relu(w_sum)), refcam.normalize(ref_raw))
    assert not np.allclose(refcam.relu(w_sum), ref_raw)
    """),
    md(r"""
    ## Conventions as data: `refcam.presets`

    refcam's preset table (`refcam.presets`: "paper", "pytorch-grad-cam", "torchcam", "captum")
    makes the post-processing of step 2 one call, and `refcam explain --preset P` applies it from
    the command line. The table also knows a detail our imitation skipped: pytorch-grad-cam
    normalises **a second time** after resizing (ReLU, mean over layers, min–max with `+1e-7`),
    which stretches each map to reach 1 again — bilinear resizing lowers sharp peaks, so on these
    maps the second pass changes values by up to ~0.2.
    """),
    code("""
    from refcam import presets

    pgc = presets.compute("gradcam", "pytorch-grad-cam", activations=A, gradients=G, input_size=(28, 28))
    print("presets:", presets.PRESET_NAMES)
    print("pytorch-grad-cam preset vs step 2, max |diff|:", np.abs(pgc - ref_pp).max())
    second_pass = refcam.normalize(refcam.relu(ref_pp), "minmax", eps=1e-7)
    assert np.allclose(pgc, second_pass, rtol=0, atol=1e-12)
    """),
    md(r"""
    ## The conformance harness: `refcam.conformance` / `refcam check` says *why*

    Instead of hand-picked arrays, `refcam.conformance.check(fn, method)` runs Hypothesis-generated
    cases (plus fixed probes with tiny gradients) through your function and through *every* refcam
    candidate: each preset (paper, pytorch-grad-cam, torchcam, captum) at each **stage** — raw at
    feature resolution, after the preset's normalisation, after its resizing. When nothing matches,
    it searches the documented convention knobs (ReLU placement, additive eps values — fitted —,
    Grad-CAM++'s α variant, normalisation, resize mode and order, sum/mean, softmax, SVD sign,
    ablation value) for the setting that explains the function, and prints a **diagnosis**: one
    line, the formula, where it matters, a minimal counterexample. From the shell:
    `refcam check my_module:their_gradcam --method gradcam --input-size 10,10` (`--json` for CI).
    """),
    code("""
    from refcam import conformance

    rep = conformance.check(lambda a, g: their_gradcam(a, g, size=(10, 10)), "gradcam",
                            input_size=(10, 10), max_examples=10)
    print("matches:", rep.matches or "none")
    print(rep.diagnosis.summary)
    print(rep.diagnosis.formula)
    """),
    md(r"""
    Our imitation matches **no** candidate: it mixes conventions. The diagnosis names them:
    min–max with eps $= 10^{-7}$ (fitted from the counterexample, not guessed), scaled *before*
    resizing — pytorch-grad-cam's first pass without its second normalisation. A reference
    implementation makes such hybrids visible instead of "close enough".
    """),
    code("""
    d = rep.diagnosis
    assert not rep.matches and d.explained
    assert [c["knob"] for c in d.changes] == ["normalize_eps", "order"]
    assert d.knob("normalize_eps") == 1e-7 and d.knob("order") == "normalize-then-upsample"
    assert d.derived_from == "pytorch-grad-cam (upsampled)" and d.search_changes == ("renormalize",)
    """),
    md(r"""
    ## The peers' own classes, called natively

    `refcam.peer_adapters.adapt(cls)` wraps a peer's class so the harness can call it the way its
    users do, on a small torch model refcam builds (the layer's input *is* the activations, the
    gradient is exactly the one given; Score-CAM and Ablation-CAM run on a generated
    `conformance.TinyModel` whose masked and ablated scores refcam computes exactly in NumPy).
    It needs torch and the peers (`pip install -e ".[peers]"`), so this notebook shows the code
    and the text it printed (grad-cam 1.5.7, torchcam 0.5.0, captum 0.9.0) for each known
    divergence of `docs/divergences.md`; `tests/peers/test_peers_conformance.py` runs it and
    asserts every knob and value.

    ```python
    import pytorch_grad_cam, torchcam.methods
    from captum.attr import LayerGradCam
    from refcam.peer_adapters import adapt

    for cls, kw in [(pytorch_grad_cam.GradCAMPlusPlus, {}), (torchcam.methods.GradCAMpp, {}),
                    (pytorch_grad_cam.ScoreCAM, {}), (LayerGradCam, {"input_size": (7, 9)}),
                    (pytorch_grad_cam.EigenCAM, {}), (torchcam.methods.CAM, {}),
                    (pytorch_grad_cam.AblationCAM, {})]:
        fn, method, mode = adapt(cls, input_size=kw.get("input_size"))
        print(cls.__module__ + "." + cls.__name__ + ":")
        print("  " + conformance.check(fn, method, mode=mode, **kw).diagnosis.summary)
    ```

    ```text
    pytorch_grad_cam.grad_cam_plusplus.GradCAMPlusPlus:
      your function = Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), min-max scaled map, ReLU on the map, with eps = 1e-06 added to the α denominator; min-max with eps = 1e-07 added to the denominator; ReLU and min-max applied a second time — pytorch-grad-cam's convention; it differs from the paper by up to 100% where 2g² + Σ A g³ is small (|g| ≲ √eps)
    torchcam.methods.gradient.GradCAMpp:
      your function = Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19), min-max scaled map, ReLU on the map, with α = g² (the division of eq. 19 lost: torchcam 0.5.0's in-place division of a copy); min-max with eps = 1e-08 added to the denominator — torchcam's convention; it differs from the paper by up to 100% wherever Σ_ab A_ab g_ij is not ≪ 2
    pytorch_grad_cam.score_cam.ScoreCAM:
      your function = Score-CAM (Wang et al. 2020, eq. 6-10), resized to the input, min-max scaled, ReLU on the map, with channel softmax of the scores; scores are the raw logits; no baseline score subtracted; masks upsampled bilinear align-corners (torch align_corners=True); eps = 1e-08 added to the mask min-max denominator; min-max with eps = 1e-07 added to the denominator; ReLU and min-max applied a second time; scaled before resizing — pytorch-grad-cam's convention; it differs from the paper by up to 100% everywhere (softmax compresses the weights' range)
    captum.attr._core.layer.grad_cam.LayerGradCam:
      your function = Grad-CAM (Selvaraju et al. 2017, eq. 1-2), resized to the input, not scaled, with no ReLU on the map; upsampled nearest (torch legacy 'nearest') instead of bilinear half-pixel (torch align_corners=False, OpenCV INTER_LINEAR) — captum's convention; it differs from the paper by up to 106% where the map Σ_k w_k A^k is negative
    pytorch_grad_cam.eigen_cam.EigenCAM:
      your function = Eigen-CAM (Muhammad & Yeasin 2020), min-max scaled map, with channels centred before the SVD; no sign rule (the SVD's arbitrary sign); a ReLU on the map; min-max with eps = 1e-07 added to the denominator; ReLU and min-max applied a second time — pytorch-grad-cam's convention; it differs from the paper by up to 100% where channels have a large mean
    torchcam.methods.activation.CAM:
      your function = CAM (Zhou et al. 2016, eq. 2), min-max scaled map, no ReLU on the map, with min-max with eps = 1e-08 added to the denominator — torchcam's convention; it differs from the paper by up to 100% where the map's range is ≲ eps
    pytorch_grad_cam.ablation_cam.AblationCAM:
      your function returned NaN or Inf on finite input in 2 of 17 kept cases (never a match); on the other cases: your function = Ablation-CAM (Desai & Ramaswamy 2020), resized to the input, min-max scaled, ReLU on the map, with ablated channels set to min(A) - 1e7, compounding (pytorch-grad-cam) — pytorch-grad-cam's convention; it differs from the paper by up to 100% at layers whose minimum is not 0 (the ablated value is min - 1e7, compounding)
    ```
    """),
]

# --------------------------------------------------------------------------------------------------
NB6 = [
    md(r"""
    # 6 · Property-based testing of CAM math with `refcam.testing`

    A hand-computed example checks one point; a **property** checks a statement for every input a
    generator can produce. `refcam.testing` provides Hypothesis strategies that follow refcam's
    array conventions, including whole GAP → linear heads whose gradient is known in closed form
    (`gap_linear_problems`), which turn the papers' identities into exact theorems:

    * Grad-CAM $=\mathrm{ReLU}(\mathrm{CAM})/Z$ on a GAP head (notebook 3);
    * the CAM identity $\frac1Z\sum_{ij}M_c(i,j) + b_c = y^c$ (notebook 2);
    * invariances: permuting channels changes nothing; scaling the head by $s>0$ scales the map by $s$.

    Use the same strategies on *your* implementation: replace `refcam.gradcam` by your function.
    """),
    SETUP,
    code("""
    from hypothesis import given, settings, strategies as st
    from refcam.testing import activations_and_gradients, gap_linear_problems

    FAST = settings(max_examples=60, deadline=None, database=None, derandomize=True)
    """),
    md(r"""
    ## Theorem: Grad-CAM = ReLU(CAM) / Z, for every GAP → linear head

    Any spatial rank (1-D, 2-D, 3-D feature maps), float32 and float64.
    """),
    code("""
    @FAST
    @given(st.sampled_from([np.float32, np.float64]).flatmap(lambda dt: gap_linear_problems(dtype=dt)))
    def gradcam_is_cam_over_z(p):
        lhs = refcam.gradcam(p.activations, p.gradients)
        rhs = refcam.relu(refcam.cam(p.activations, p.class_weights)) / p.Z
        tol = 1e-5 if p.activations.dtype == np.float32 else 1e-12
        scale = 1 + np.abs(rhs).max()
        assert lhs.dtype == p.activations.dtype
        assert np.allclose(lhs, rhs, rtol=tol, atol=tol * scale)

    gradcam_is_cam_over_z()
    print("ok")
    """),
    md(r"""
    ## Theorem: the CAM identity $\mathrm{mean}_{ij} M_c + b_c = y^c$
    """),
    code("""
    @FAST
    @given(gap_linear_problems())
    def cam_mean_is_logit(p):
        m = refcam.cam(p.activations, p.class_weights)
        n = m.shape[0]
        assert np.allclose(m.reshape(n, -1).mean(axis=1) + p.bias[p.targets], p.scores, rtol=1e-10, atol=1e-9)

    cam_mean_is_logit()
    print("ok")
    """),
    md(r"""
    ## Invariances: channel permutation and positive scaling
    """),
    code("""
    @FAST
    @given(activations_and_gradients(), st.randoms(use_true_random=False), st.floats(0.125, 8.0))
    def invariances(ag, rnd, s):
        a, g = ag
        perm = list(range(a.shape[1])); rnd.shuffle(perm)
        base = refcam.gradcam(a, g)
        assert np.allclose(refcam.gradcam(a[:, perm], g[:, perm]), base, rtol=1e-12, atol=1e-12)
        assert np.allclose(refcam.gradcam(a, s * g), s * base, rtol=1e-12, atol=1e-12)

    invariances()
    print("ok")
    """),
    md(r"""
    ## A property catches a bug that examples miss

    A plausible slip: compute the Grad-CAM weights with a *sum* and divide by the length of the
    first spatial axis only. On 1-D maps (and maps one pixel wide) it is right, so a hand-made
    1-D example passes; Hypothesis finds a counterexample and shrinks it to a minimal one.
    """),
    code("""
    def wrong_gradcam(a, g):
        w = g.sum(axis=tuple(range(2, g.ndim))) / g.shape[2]       # divides by H, not Z = H*W
        return refcam.relu(refcam.weighted_sum(a, w))

    @FAST
    @given(activations_and_gradients())
    def agrees(ag):
        a, g = ag
        assert np.allclose(wrong_gradcam(a, g), refcam.gradcam(a, g), rtol=1e-9, atol=1e-9)

    try:
        agrees()
        found = None
    except AssertionError as exc:
        found = exc
    print("counterexample found:", found is not None)
    assert found is not None
    """),
]

# --------------------------------------------------------------------------------------------------
NB7 = [
    md(r"""
    # 7 · Explaining a vision transformer

    A CAM method reads a layer as $A \in \mathbb R^{N \times K \times H \times W}$. A vision
    transformer holds its features as **tokens** $(N, T, D)$: $p$ prefix tokens (class,
    distillation, register) followed by the $h \cdot w$ patch tokens of a grid, row by row.
    pytorch-grad-cam asks its users for a `reshape_transform`
    (`t[:, 1:, :].reshape(N, h, w, D)`, then channels first) and for the right layer; its issue
    tracker shows how often both go wrong. refcam reads both from the graph:

    * the **layout** of every tensor (batch, channel, spatial or token axes) is propagated from the
      input through the ops — Conv outputs are NCHW by the ONNX spec, Transposes permute axes, the
      Reshape that flattens the patch grid makes tokens, the Concat of the class token counts the
      prefix;
    * the **default layer** sits *before* the last attention when the head reads the class token.

    This notebook builds a tiny ViT in ONNX (no torch needed), then runs Grad-CAM on its tokens,
    attention rollout (Abnar & Zuidema 2020) and the gradient-weighted relevance of Chefer, Gur &
    Wolf (2021).
    """),
    SETUP,
    code("""
    from onnx import TensorProto, helper, numpy_helper

    from refcam.onnx import Model


    def tiny_vit(prefix=1, d=8, grid=4, patch=4, blocks=2, classes=5, seed=0):
        \"\"\"Patch Conv -> (N, T, D) tokens with `prefix` learned tokens -> `blocks` pre-norm
        single-head attention blocks with MLPs -> LayerNorm -> class token -> linear head.\"\"\"
        rng = np.random.default_rng(seed)
        w = lambda *s: (rng.standard_normal(s) * 0.4).astype(np.float32)
        init = {"wp": w(d, 3, patch, patch), "shape": np.array([0, d, -1], np.int64),
                "cls": w(1, prefix, d), "pos": w(1, prefix + grid * grid, d),
                "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
                "idx": np.array(0, np.int64), "g": np.ones(d, np.float32), "b": np.zeros(d, np.float32),
                "scale": np.array(d ** -0.5, np.float32), "head": w(classes, d)}
        nodes = [
            helper.make_node("Conv", ["image", "wp"], ["patches"], strides=[patch, patch]),
            helper.make_node("Reshape", ["patches", "shape"], ["flat"]),
            helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
            helper.make_node("Shape", ["image"], ["ishape"]),
            helper.make_node("Gather", ["ishape", "zero"], ["n"], axis=0),
            helper.make_node("Concat", ["n", "one", "one"], ["eshape"], axis=0),
            helper.make_node("Expand", ["cls", "eshape"], ["clsN"]),
            helper.make_node("Concat", ["clsN", "tokens"], ["seq"], axis=1),
            helper.make_node("Add", ["seq", "pos"], ["x0"]),
        ]
        x = "x0"
        for i in range(blocks):
            for nm in ("q", "k", "v", "o", "m1", "m2"):
                init[f"{nm}{i}"] = w(d, d)
            nodes += [
                helper.make_node("LayerNormalization", [x, "g", "b"], [f"block{i}.norm1"]),
                *(helper.make_node("MatMul", [f"block{i}.norm1", f"{nm}{i}"], [f"block{i}.{nm}"])
                  for nm in "qkv"),
                helper.make_node("Transpose", [f"block{i}.k"], [f"block{i}.kt"], perm=[0, 2, 1]),
                helper.make_node("MatMul", [f"block{i}.q", f"block{i}.kt"], [f"block{i}.qk"]),
                helper.make_node("Mul", [f"block{i}.qk", "scale"], [f"block{i}.scores"]),
                helper.make_node("Softmax", [f"block{i}.scores"], [f"block{i}.attn"], axis=-1),
                helper.make_node("MatMul", [f"block{i}.attn", f"block{i}.v"], [f"block{i}.ctx"]),
                helper.make_node("MatMul", [f"block{i}.ctx", f"o{i}"], [f"block{i}.proj"]),
                helper.make_node("Add", [x, f"block{i}.proj"], [f"block{i}.res1"]),
                helper.make_node("LayerNormalization", [f"block{i}.res1", "g", "b"], [f"block{i}.norm2"]),
                helper.make_node("MatMul", [f"block{i}.norm2", f"m1{i}"], [f"block{i}.fc1"]),
                helper.make_node("Relu", [f"block{i}.fc1"], [f"block{i}.act"]),
                helper.make_node("MatMul", [f"block{i}.act", f"m2{i}"], [f"block{i}.fc2"]),
                helper.make_node("Add", [f"block{i}.res1", f"block{i}.fc2"], [f"block{i}.out"]),
            ]
            x = f"block{i}.out"
        nodes += [helper.make_node("LayerNormalization", [x, "g", "b"], ["norm"]),
                  helper.make_node("Gather", ["norm", "idx"], ["cls_token"], axis=1),
                  helper.make_node("Gemm", ["cls_token", "head"], ["logits"], transB=1)]
        size = grid * patch
        graph = helper.make_graph(
            nodes, "tiny_vit",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
            [numpy_helper.from_array(v, k) for k, v in init.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


    model = Model(tiny_vit())
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    print(model)
    """),
    md(r"""
    ## The layout of every layer

    `Model.layers()` (and `refcam layers MODEL` on the command line) gives each tensor its layout.
    `NTC 1+4x4` reads: batch, tokens, channels; one prefix token, then a 4×4 grid. `?` marks a
    tensor whose axes do not keep a per-position meaning (attention scores mix tokens); refcam
    refuses to explain it unless you pass `layer_layout=`.
    """),
    code("""
    for li in model.layers():
        print(f"{li.name:16s} {li.op_type:20s} {str(li.shape):18s} {li.layout.describe()}")
    lay = {li.name: li.layout.describe() for li in model.layers()}
    assert lay["patches"] == "NCHW" and lay["tokens"] == "NTC 0+4x4" and lay["x0"] == "NTC 1+4x4"
    assert lay["block1.attn"] == "?" and lay["cls_token"] == "NC"
    """),
    md(r"""
    ## Which layer?

    The head reads only the class token. After the **last** attention, nothing mixes the patch
    tokens into the class token any more, so $\partial y^c / \partial A$ is exactly zero at every
    patch token of the final block's output and Grad-CAM there is an all-zero map. The default
    layer is therefore the input of the last attention (pytorch-grad-cam documents
    `blocks[-1].norm1` for the same reason):
    """),
    code("""
    from refcam.autodiff import gradients

    print("default layer:", model.default_layer().name)
    assert model.default_layer().name == "block1.norm1"
    g = gradients(model, x, wrt="block1.out", target=[0, 1]).gradients["block1.out"]
    print("non-zero gradients at the patch tokens of the last block's output:", np.count_nonzero(g))
    assert np.count_nonzero(g) == 0
    """),
    md(r"""
    ## Grad-CAM on tokens

    The activations arrive as $(N, D, h, w)$: the prefix token dropped, the grid unflattened —
    exactly pytorch-grad-cam's `reshape_transform`, but read from the graph. The check below does
    the reshape by hand on the raw tensor.
    """),
    code("""
    e = refcam.explain(model, x, "gradcam", target=[0, 1])
    print(e.layer.name, e.layer.layout.describe(), "->", e.arrays["activations"].shape)
    raw = model.run(x, ["block1.norm1"])["block1.norm1"]              # (N, T, D) as in the graph
    by_hand = raw[:, 1:, :].reshape(2, 4, 4, 8).transpose(0, 3, 1, 2)  # reshape_transform
    assert np.array_equal(e.arrays["activations"], by_hand)
    print(np.round(e.maps[0], 3))
    """),
    md(r"""
    ## Ablation-CAM on tokens

    Ablation-CAM (Desai & Ramaswamy 2020) needs the score $y^c_k$ with channel $k$ of the layer
    removed. `block1.norm1` feeds only the attention branch: the residual stream goes around it, so
    there is no "rest of the network" taking the layer alone. refcam then re-runs the whole graph
    with the layer tensor fed from outside (`refcam.onnx.override`), as pytorch-grad-cam swaps the
    module for its `AblationLayerVit`. Channel $k$ is set on **every** token, the class token
    included (what `AblationLayerVit` does); the map is over the patch grid. With the layer fed
    unchanged the re-run is the model itself:
    """),
    code("""
    ab = refcam.explain(model, x, "ablationcam", target=[0, 1])
    logits = model.run(x)["logits"]
    assert np.allclose(ab.arrays["ablation_base_scores"][:, 0], logits[[0, 1], [0, 1]], rtol=1e-6, atol=1e-6)
    print("y^c_k, sample 0:", np.round(ab.arrays["ablated_scores"][0, 0], 3))
    print(np.round(ab.maps[0], 3))
    """),
    md(r"""
    ## What refcam refuses

    A layer whose layout the graph leaves unclear, a map of fewer than 2×2 positions, or a name that
    means several tensors end in a `RefcamError` that says what to pass, never in a picture.
    """),
    code("""
    for layer, kw in [("block1.attn", {}), ("cls_token", {})]:
        try:
            refcam.explain(model, x, "gradcam", layer=layer, **kw)
        except refcam.RefcamError as err:
            print(type(err).__name__, "-", str(err)[:150], "...")
    # an explicit layout makes an unclear tensor explainable (here: the same tokens, said by hand)
    e2 = refcam.explain(model, x, "gradcam", layer="block1.norm1", layer_layout="NTC:1+4x4", target=[0, 1])
    assert np.array_equal(e2.maps, e.maps)
    """),
    md(r"""
    ## Attention rollout and the Chefer relevance

    Both start from the attention probabilities $A^{(l)} = \mathrm{softmax}(QK^\top/\sqrt d)$ of
    each block, found in the graph as the Softmax that multiplies the values.

    * **Rollout** (Abnar & Zuidema 2020, Eq. 1): $\hat A^{(l)} = \tfrac12 \bar A^{(l)} + \tfrac12 I$
      (heads averaged, the residual as identity), $\tilde A = \hat A^{(L)} \cdots \hat A^{(1)}$;
      class-agnostic.
    * **Chefer et al. 2021** (Eq. 5–6): $\bar A^{(l)} = \mathbb E_h[(\nabla A^{(l)} \odot A^{(l)})^+]$,
      $R \leftarrow R + \bar A^{(l)} R$ from $R = I$; $\nabla A = \partial y^c / \partial A$ makes it
      class-specific.

    The map is the class token's row over the patch tokens.
    """),
    code("""
    from refcam.attention_explanation import explain_attention

    ro = explain_attention(model, x, "rollout")
    ch = explain_attention(model, x, "chefer", target=[0, 1])
    print("layers:", [p.name for p in ro.probes], " grid:", ro.grid, " prefix:", ro.prefix)
    assert np.allclose(ro.relevance.sum(axis=-1), 1.0)   # rollout rows stay distributions
    # the same numbers from the math floor on the probabilities read by hand
    atts = [model.run(x, [p.name])[p.name][:, None] for p in ro.probes]   # (N, 1 head, T, T)
    assert np.allclose(ro.relevance, refcam.attention_rollout(atts), atol=1e-6)
    print("rollout\\n", np.round(ro.maps[0], 3))
    print("Chefer (class 0)\\n", np.round(ch.maps[0], 3))
    """),
]


NB8 = [
    md("""
    # 08 · A dataset into a Zarr store: maps of every present class

    Weakly supervised segmentation builds pseudo-labels from the CAMs of **every class present** in
    each image. `refcam.explain_dataset` explains a whole folder / glob / CSV list in batches and
    streams maps, scores, targets and ids into a Zarr store (resumable; `workers=N` runs on Dask,
    see `docs/datasets.md`). Here: a toy GAP → linear model, six images, a CSV with 1-3 labels each.
    """),
    code("""
    import json
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np
    import onnx
    import zarr
    from PIL import Image

    import refcam
    from refcam.onnx.toy_models import cam_net

    work = Path(tempfile.mkdtemp())
    onnx.save(cam_net(num_classes=5, size=12), work / "model.onnx")
    rng = np.random.default_rng(0)
    rows = ["path,classes"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(work / f"im{i}.png")
        present = sorted(rng.choice(5, size=1 + i % 3, replace=False).tolist())
        rows.append(f"im{i}.png," + " ".join(map(str, present)))
    (work / "labels.csv").write_text("\\n".join(rows) + "\\n")
    print((work / "labels.csv").read_text())
    """),
    md("""
    One call: CAM of the labelled classes (`target="labels"`), four images per chunk. CAM of many
    classes comes from one product of the activations with the head weights (`refcam.allclass`).
    """),
    code("""
    r = refcam.explain_dataset(work / "model.onnx", work / "labels.csv", work / "maps.zarr", "cam",
                               target="labels", batch_size=4, crop_padding=0, relu=True)
    print(r)
    g = zarr.open_group(str(work / "maps.zarr"), mode="r")
    print({k: g[k].shape for k in ("maps", "scores", "targets", "status", "ids")})
    print(json.loads((work / "maps.zarr" / "manifest.json").read_text())["method"])
    assert r.n_done == 6 and (g["status"][:] == 1).all()
    """),
    md("""
    `targets` holds each image's classes, padded with `-1` (and NaN maps) to the longest list.
    One row of maps per image, one column per present class:
    """),
    code("""
    maps, targets, ids = g["maps"][:], g["targets"][:], g["ids"][:]
    fig, axes = plt.subplots(len(ids), maps.shape[1], figsize=(2 * maps.shape[1], 2 * len(ids)))
    for i in range(len(ids)):
        for t in range(maps.shape[1]):
            ax = axes[i, t]
            ax.axis("off")
            if targets[i, t] >= 0:
                ax.imshow(maps[i, t], cmap="jet")
                ax.set_title(f"{Path(ids[i]).name}: class {targets[i, t]}", fontsize=8)
    plt.tight_layout()
    # the same maps as refcam.explain of one class at a time
    from refcam.onnx import load
    from refcam.zoo._images import load_inputs

    x = load_inputs([ids[5]], load(str(work / "model.onnx")), crop_padding=0)[0].x
    for t, c in enumerate(targets[5][targets[5] >= 0]):
        one = refcam.explain(work / "model.onnx", x, "cam", target=int(c), relu=True).maps[0]
        assert np.allclose(maps[5, t], one, rtol=1e-5, atol=1e-6)
    """),
]


NOTEBOOKS = {
    "01_saliency_and_guided_backprop.ipynb": NB1,
    "02_cam_and_gap.ipynb": NB2,
    "03_gradcam_and_gradcampp.ipynb": NB3,
    "04_scorecam_gradient_free.ipynb": NB4,
    "05_validating_an_implementation.ipynb": NB5,
    "06_property_based_testing.ipynb": NB6,
    "07_explaining_a_vision_transformer.ipynb": NB7,
    "08_datasets_to_zarr.ipynb": NB8,
}


def build(name: str):
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    # deterministic cell ids (nbformat >= 4.5 requires ids; random ones would make every build a diff)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    bad = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                bad.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(path)
    if bad:
        print("out of date (run python notebooks/_build.py):", ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
