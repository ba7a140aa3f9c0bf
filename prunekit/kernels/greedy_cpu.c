/* prunekit: the greedy residual selection's K steps in one native call (CPU).
 *
 * One call runs steps [step_begin, step_end) of greedy_residual_order for one sample, with
 * exactly the reference loop's arithmetic per element (float: build with -ffp-contract=off):
 *
 *   score = avail ? w*E : -inf ; fill = avail ? w : -inf ; best = max(score)
 *   key, top = best > 0 ? (score, best) : (fill, max(fill))
 *   pick = lowest i with key[i] >= top - |top| * tie_rtol   (nothing available: 0)
 *   F[step] = (G[pick] - sum_{j<step} F[j,pick] F[j]) * (E[pick] > 0 ? 1/sqrt(E[pick]) : 0)
 *   E -= F[step]^2 ; E[E <= tol] = 0 ; avail[pick] = 0
 *
 * Gram rows come from a cache: token i's row is rows[slot[i]], from which the first
 * slot_step[slot[i]] factor rows are already subtracted. The Gram path passes the whole
 * Gram matrix (slot = identity, slot_step = 0). When a pick has no cached row (slot = -1) the
 * call stores the pick, changes nothing else and returns its step, so that the caller can
 * compute rows and call again from that step; it returns step_end when every step ran.
 *
 * residuals (NULL: not computed) receives, after each step, the sum of E over all n tokens,
 * accumulated in double (callers zero the energies of padded tokens, which stay 0): the
 * energy the kept span leaves unexplained, for adaptive budgets. It is a separate pass so
 * that the update loop of the NULL path stays as it was.
 */
#include <math.h>
#include <stdint.h>

#define DEFINE_GREEDY(NAME, T, SQRT, FABS)                                                     \
    int64_t NAME(int64_t n, int64_t step_begin, int64_t step_end, const T *rows,               \
                 const int64_t *slot, const int64_t *slot_step, T *factors, T *energy,         \
                 const T *tol, const T *weights, uint8_t *avail, double tie_rtol,              \
                 int64_t *picks, T *residuals) {                                               \
        const T rtol = (T)tie_rtol;                                                            \
        for (int64_t step = step_begin; step < step_end; ++step) {                             \
            T best = -INFINITY, fill_best = -INFINITY;                                         \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                if (avail[i]) {                                                                \
                    T s = weights[i] * energy[i];                                              \
                    if (s > best) best = s;                                                    \
                    if (weights[i] > fill_best) fill_best = weights[i];                        \
                }                                                                              \
            }                                                                                  \
            const int positive = best > 0;                                                     \
            const T top = positive ? best : fill_best;                                         \
            int64_t pick = 0;                                                                  \
            if (top > -INFINITY) {                                                             \
                const T threshold = top - FABS(top) * rtol;                                    \
                for (int64_t i = 0; i < n; ++i) {                                              \
                    if (avail[i] && (positive ? weights[i] * energy[i] : weights[i]) >= threshold) { \
                        pick = i;                                                              \
                        break;                                                                 \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            picks[step] = pick;                                                                \
            const int64_t r = slot[pick];                                                      \
            if (r < 0) return step;                                                            \
            T *column = factors + step * n;                                                    \
            const T *row = rows + r * n;                                                       \
            for (int64_t i = 0; i < n; ++i) column[i] = row[i];                                \
            for (int64_t j = slot_step[r]; j < step; ++j) {                                    \
                const T *done = factors + j * n;                                               \
                const T c = done[pick];                                                        \
                if (c != 0)                                                                    \
                    for (int64_t i = 0; i < n; ++i) column[i] -= c * done[i];                  \
            }                                                                                  \
            const T picked = energy[pick];                                                     \
            const T scale = picked > 0 ? (T)1 / SQRT(picked) : (T)0;                           \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const T f = column[i] * scale;                                                 \
                const T e = energy[i] - f * f;                                                 \
                column[i] = f;                                                                 \
                energy[i] = e <= tol[i] ? (T)0 : e;                                            \
            }                                                                                  \
            avail[pick] = 0;                                                                   \
            if (residuals) {                                                                   \
                double sum = 0;                                                                \
                for (int64_t i = 0; i < n; ++i) sum += (double)weights[i] * energy[i];                              \
                residuals[step] = (T)sum;                                                      \
            }                                                                                  \
        }                                                                                      \
        return step_end;                                                                       \
    }

DEFINE_GREEDY(prunekit_greedy_f32, float, sqrtf, fabsf)
DEFINE_GREEDY(prunekit_greedy_f64, double, sqrt, fabs)
