"""AdaBelief (Zhuang et al., NeurIPS 2020) as a Keras 3 optimizer.

Adam scales each step by the running mean of g^2; AdaBelief scales it by the running
variance of the gradient around its own running mean (the "belief" in the gradient):
a step is large where the gradient agrees with its recent history, small where it
does not. Per variable, at step t (starting at 1):

    m_t = beta_1 m + (1 - beta_1) g
    s_t = beta_2 s + (1 - beta_2) (g - m_t)^2 + epsilon
    m_hat = m_t / (1 - beta_1^t),  s_hat = s_t / (1 - beta_2^t)
    theta <- theta - lr * m_hat / (sqrt(s_hat) + epsilon)

`rectify=True` applies RAdam's rectification (Liu et al. 2020): with
rho_inf = 2 / (1 - beta_2) - 1 and rho_t = rho_inf - 2 t beta_2^t / (1 - beta_2^t), the
adaptive step is multiplied by
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
while rho_t > 4; before that (the first few steps, when the variance estimate is not
yet tractable) the step is plain momentum SGD, theta <- theta - lr * m_hat.

Weight decay is decoupled (AdamW-style): with `weight_decay` = w, every step first does
theta <- theta - lr * w * theta (Keras' base optimizer applies it before the update).
"""
from __future__ import annotations

import keras
from keras import ops


def rectification(step, beta_2: float):
    """RAdam's (rho_t, r_t) at `step` (1-based), in float64: rho_t is a small difference of
    two numbers near 2 / (1 - beta_2), which float32 would round badly."""
    t = ops.cast(step, "float64")
    b2_power = ops.power(ops.convert_to_tensor(beta_2, dtype="float64"), t)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    rho_t = rho_inf - 2.0 * t * b2_power / (1.0 - b2_power)
    ratio = ops.maximum(rho_t - 4.0, 0.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    return rho_t, ops.sqrt(ratio)


@keras.saving.register_keras_serializable(package="bearcat")
class AdaBelief(keras.optimizers.Optimizer):
    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-16,
                 rectify: bool = True, weight_decay=None, name: str = "adabelief", **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        if not (0.0 <= beta_1 < 1.0 and 0.0 <= beta_2 < 1.0):
            raise ValueError(f"optimizer.beta_1={beta_1} / optimizer.beta_2={beta_2}: must be in [0, 1)")
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon, self.rectify = float(epsilon), bool(rectify)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._means, self._beliefs = self.add_optimizer_variables(var_list, ["mean", "belief"])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        b1, b2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        b1_power, b2_power = ops.power(b1, t), ops.power(b2, t)

        index = self._get_variable_index(variable)
        m, s = self._means[index], self._beliefs[index]
        self.assign(m, b1 * m + (1.0 - b1) * g)
        self.assign(s, b2 * s + (1.0 - b2) * ops.square(g - m) + self.epsilon)

        m_hat = m / (1.0 - b1_power)
        adaptive = m_hat / (ops.sqrt(s / (1.0 - b2_power)) + self.epsilon)
        if self.rectify:
            rho_t, r_t = rectification(self.iterations + 1, self.beta_2)
            step = ops.where(rho_t > 4.0, ops.cast(r_t, dtype) * adaptive, m_hat)
        else:
            step = adaptive
        self.assign_sub(variable, lr * step)

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, rectify=self.rectify)
        return config
