// The largest integer a JS number holds exactly (and every smaller one with it): Number.MAX_SAFE_INTEGER,
// 2^53 - 1. Every number the binding takes as an integer (lengths, offsets, thresholds) is checked against this
// one bound; TypeScript checks the same with Number.isSafeInteger (test/limits.test.ts keeps the two equal).
#pragma once

namespace kvf {

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1
static_assert(kMaxSafeInteger + 1 == 9007199254740992.0 && kMaxSafeInteger - 1 == 9007199254740990.0,
              "2^53 - 1 and its neighbours are exact doubles");

}  // namespace kvf
