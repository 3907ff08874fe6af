// What every benchmark reports beside its figures: the median of a sample
// and the machine's load average (on a shared machine only ratios measured
// in one run mean much, and the load says how shared it was).
#pragma once

#include <string>
#include <vector>

namespace ralph::testing {

// The middle value (the upper one of an even count); 0 for no values.
double Median(std::vector<double> values);

// "1.16 1.11 1.61": the 1, 5 and 15 minute load averages, "?" if unknown.
std::string LoadAverage();

}  // namespace ralph::testing
