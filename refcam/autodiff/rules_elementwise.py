r"""Element-wise backward rules, each one line: the derivative :math:`f'(x)` of :math:`y = f(x)`.

Every rule below returns :math:`\partial\langle s, y\rangle/\partial x = g \odot f'(x)`, written with
:func:`refcam.autodiff.sym.unary` (``x``: input, ``y``: output, ``a``: attributes; numbers become
constants of ``x``'s element type).  Conventions at kinks (measure-zero sets where finite
differences are undefined too) are stated per rule.
"""

from __future__ import annotations

import math

from .sym import unary, where

# ---- arithmetic -----------------------------------------------------------------------------


@unary("Neg")
def _neg(x, y, a):
    """:math:`y = -x`, :math:`f' = -1`."""
    return -1.0


@unary("Abs")
def _abs(x, y, a):
    """:math:`y = |x|`, :math:`f' = \\mathrm{sign}(x)` (0 at the kink x = 0)."""
    return x.sign()


@unary("Exp")
def _exp(x, y, a):
    """:math:`f' = e^x = y`."""
    return y


@unary("Log")
def _log(x, y, a):
    """:math:`f' = 1/x`."""
    return 1.0 / x


@unary("Sqrt")
def _sqrt(x, y, a):
    """:math:`f' = 1/(2\\sqrt{x}) = 1/(2y)`."""
    return 1.0 / (y * 2.0)


@unary("Reciprocal")
def _reciprocal(x, y, a):
    """:math:`y = 1/x`, :math:`f' = -1/x^2 = -y^2`."""
    return -(y * y)


# ---- activations ------------------------------------------------------------------------------


@unary("Sigmoid")
def _sigmoid(x, y, a):
    """:math:`f' = \\sigma(x)(1 - \\sigma(x)) = y(1 - y)`."""
    return y * (1.0 - y)


@unary("Tanh")
def _tanh(x, y, a):
    """:math:`f' = 1 - \\tanh^2 x = 1 - y^2`."""
    return 1.0 - y * y


@unary("Softplus")
def _softplus(x, y, a):
    """:math:`y = \\log(1 + e^x)`, :math:`f' = \\sigma(x)`."""
    return x.sigmoid()


@unary("Softsign")
def _softsign(x, y, a):
    """:math:`y = x/(1+|x|)`, :math:`f' = 1/(1+|x|)^2`."""
    d = 1.0 + x.abs()
    return 1.0 / (d * d)


@unary("Elu")
def _elu(x, y, a):
    """:math:`y = x\\ (x>0),\\ \\alpha(e^x-1)`; :math:`f' = 1\\ (x>0),\\ y + \\alpha` (left value at 0)."""
    return where(x > 0.0, 1.0, y + a.get("alpha", 1.0))


@unary("Selu")
def _selu(x, y, a):
    """:math:`y = \\gamma x\\ (x>0),\\ \\gamma\\alpha(e^x-1)`; :math:`f' = \\gamma,\\ y + \\gamma\\alpha`."""
    al = a.get("alpha", 1.67326319217681884765625)
    ga = a.get("gamma", 1.05070102214813232421875)
    return where(x > 0.0, ga, y + ga * al)


@unary("Celu")
def _celu(x, y, a):
    """:math:`y = x\\ (x>0),\\ \\alpha(e^{x/\\alpha}-1)`; :math:`f' = 1,\\ e^{x/\\alpha} = y/\\alpha + 1`."""
    return where(x > 0.0, 1.0, y / a.get("alpha", 1.0) + 1.0)


@unary("Mish")
def _mish(x, y, a):
    """:math:`y = x\\tanh(\\mathrm{sp}(x))`; :math:`f' = t + x(1 - t^2)\\sigma(x)`, :math:`t = \\tanh(\\mathrm{sp}(x))`."""
    t = x.softplus().tanh()
    return t + x * ((1.0 - t * t) * x.sigmoid())


@unary("HardSigmoid")
def _hardsigmoid(x, y, a):
    """:math:`y = \\max(0, \\min(1, \\alpha x + \\beta))`; :math:`f' = \\alpha [0 < \\alpha x+\\beta < 1]`."""
    al, be = a.get("alpha", 0.2), a.get("beta", 0.5)
    t = x * al + be
    return ((t > 0.0) & (t < 1.0)).mask() * al


@unary("HardSwish")
def _hardswish(x, y, a):
    """:math:`y = x\\,\\mathrm{clip}(x/6 + 1/2, 0, 1)`; :math:`f' = 0\\ (x<-3),\\ x/3 + 1/2,\\ 1\\ (x>3)`."""
    return where(x < -3.0, 0.0, where(x > 3.0, 1.0, x / 3.0 + 0.5))


@unary("Erf")
def _erf(x, y, a):
    """:math:`f' = \\frac{2}{\\sqrt\\pi} e^{-x^2}`."""
    return (-(x * x)).exp() * (2.0 / math.sqrt(math.pi))


@unary("Gelu")
def _gelu(x, y, a):
    """Exact: :math:`y = x\\Phi(x)`, :math:`f' = \\Phi(x) + x\\varphi(x)`.  ``approximate="tanh"``:
    :math:`y = \\tfrac12 x(1+\\tanh u)`, :math:`u = k(x + 0.044715x^3)`, :math:`k=\\sqrt{2/\\pi}`,
    :math:`f' = \\tfrac12(1+t) + \\tfrac12 x(1-t^2)\\,k(1 + 3\\cdot0.044715x^2)`."""
    if a.get("approximate", "none") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        x2 = x * x
        t = ((x + x2 * x * 0.044715) * k).tanh()
        return (1.0 + t) * 0.5 + (x * 0.5) * ((1.0 - t * t) * ((1.0 + x2 * (3 * 0.044715)) * k))
    cdf = ((x * (1 / math.sqrt(2))).erf() + 1.0) * 0.5
    pdf = (x * x * -0.5).exp() * (1 / math.sqrt(2 * math.pi))
    return cdf + x * pdf


# ---- trigonometric and hyperbolic (new) --------------------------------------------------------


@unary("Sin")
def _sin(x, y, a):
    """:math:`f' = \\cos x`."""
    return x.cos()


@unary("Cos")
def _cos(x, y, a):
    """:math:`f' = -\\sin x`."""
    return -x.sin()


@unary("Tan")
def _tan(x, y, a):
    """:math:`f' = 1 + \\tan^2 x = 1 + y^2`."""
    return 1.0 + y * y


@unary("Asin")
def _asin(x, y, a):
    """:math:`f' = 1/\\sqrt{1-x^2}`."""
    return 1.0 / (1.0 - x * x).sqrt()


@unary("Acos")
def _acos(x, y, a):
    """:math:`f' = -1/\\sqrt{1-x^2}`."""
    return -1.0 / (1.0 - x * x).sqrt()


@unary("Atan")
def _atan(x, y, a):
    """:math:`f' = 1/(1+x^2)`."""
    return 1.0 / (1.0 + x * x)


@unary("Sinh")
def _sinh(x, y, a):
    """:math:`f' = \\cosh x`."""
    return x.cosh()


@unary("Cosh")
def _cosh(x, y, a):
    """:math:`f' = \\sinh x`."""
    return x._op("Sinh")


@unary("Asinh")
def _asinh(x, y, a):
    """:math:`f' = 1/\\sqrt{x^2+1}`."""
    return 1.0 / (x * x + 1.0).sqrt()


@unary("Acosh")
def _acosh(x, y, a):
    """:math:`f' = 1/\\sqrt{x^2-1}`."""
    return 1.0 / (x * x - 1.0).sqrt()


@unary("Atanh")
def _atanh(x, y, a):
    """:math:`f' = 1/(1-x^2)`."""
    return 1.0 / (1.0 - x * x)


@unary("ThresholdedRelu")
def _thresholded_relu(x, y, a):
    """:math:`y = x\\,[x > \\alpha]`, :math:`f' = [x > \\alpha]` (0 at the jump)."""
    return (x > a.get("alpha", 1.0)).mask()


@unary("Shrink")
def _shrink(x, y, a):
    """:math:`y = x \\mp b` for :math:`x \\gtrless \\pm\\lambda`, else 0; :math:`f' = [|x| > \\lambda]`
    (0 at the jumps :math:`x = \\pm\\lambda`)."""
    lam = a.get("lambd", 0.5)
    return ((x > lam) | (x < -lam)).mask()
