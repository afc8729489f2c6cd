// A branch-free exp that GCC and Clang auto-vectorise inside plain loops (std::exp is a libm
// call and blocks vectorisation). Cody-Waite range reduction x = k ln2 + r, |r| <= ln2 / 2, a
// polynomial for e^r, and 2^k assembled in the exponent bits. Accuracy: about 2 ulp in float,
// about 2 ulp in double. exp(-inf) = 0, exp(+inf) = inf, NaN propagates; results below the
// smallest normal number flush to zero (harmless for the sums of exponentials it serves).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace lcmat {
namespace cpu {

inline float vexp(float x) {
  const float lo = -87.33654f, hi = 88.0f;
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  // k = round(x / ln2) by the magic-number trick: adding 1.5 * 2^23 rounds to an integer whose
  // value sits in the low mantissa bits.
  const float magic = 12582912.0f;
  float t = xc * 1.44269504088896341f + magic;
  float k = t - magic;
  float r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t tb, mb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&mb, &magic, 4);
  int32_t bits = (tb - mb + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  float out = y * scale;
  out = x < lo ? 0.0f : out;
  return x > 88.72283f ? std::numeric_limits<float>::infinity() : out;
}

inline double vexp(double x) {
  const double lo = -708.39641853226408, hi = 709.0;
  double xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  double t = xc * 1.4426950408889634074 + magic;
  double k = t - magic;
  double r = xc - k * 6.93145751953125e-1;
  r = r - k * 1.42860682030941723212e-6;
  // Taylor series of e^r to degree 12: truncation error below 2e-16 on |r| <= ln2 / 2.
  double p = 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  double y = p * r * r + r + 1.0;
  int64_t tb, mb;
  std::memcpy(&tb, &t, 8);
  std::memcpy(&mb, &magic, 8);
  int64_t bits = (tb - mb + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, 8);
  double out = y * scale;
  out = x < lo ? 0.0 : out;
  return x > 709.782712893384 ? std::numeric_limits<double>::infinity() : out;
}

// A branch-free log for x = 0 or a positive normal number (the sums of exponentials that Sinkhorn
// takes the log of are >= 1 or exactly 0), auto-vectorised like vexp. x = 2^k u with u in
// [sqrt(1/2), sqrt(2)), and log u = 2 atanh(s), s = (u - 1) / (u + 1), |s| <= 0.172, by its odd
// series: terms to s^9 in float, to s^23 in double, below half an ulp. log 0 = -inf, NaN and +inf
// propagate.
inline float vlog(float x) {
  int32_t bits, sqrt_half;
  const float sqrt_half_f = 0.70710678118654752f;
  std::memcpy(&bits, &x, 4);
  std::memcpy(&sqrt_half, &sqrt_half_f, 4);
  const int32_t k = (bits - sqrt_half) >> 23;
  const int32_t ubits = bits - (k << 23);
  float u;
  std::memcpy(&u, &ubits, 4);
  const float s = (u - 1.0f) / (u + 1.0f), s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  const float kf = static_cast<float>(k);
  float out = (kf * -2.12194440e-4f + 2.0f * s * p) + kf * 0.693359375f;
  out = x == 0.0f ? -std::numeric_limits<float>::infinity() : out;
  return x > 3.4e38f || x != x ? x : out;
}

inline double vlog(double x) {
  int64_t bits, sqrt_half;
  const double sqrt_half_d = 0.70710678118654752440;
  std::memcpy(&bits, &x, 8);
  std::memcpy(&sqrt_half, &sqrt_half_d, 8);
  const int64_t k = (bits - sqrt_half) >> 52;
  const int64_t ubits = bits - (k << 52);
  double u;
  std::memcpy(&u, &ubits, 8);
  const double s = (u - 1.0) / (u + 1.0), s2 = s * s;
  double p = 1.0 / 23.0;
  for (int d = 21; d >= 1; d -= 2) p = p * s2 + 1.0 / d;
  const double kd = static_cast<double>(k);
  double out = (kd * 1.42860682030941723212e-6 + 2.0 * s * p) + kd * 6.93145751953125e-1;
  out = x == 0.0 ? -std::numeric_limits<double>::infinity() : out;
  return x > 1.7e308 || x != x ? x : out;
}

}  // namespace cpu
}  // namespace lcmat
