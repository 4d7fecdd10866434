// The glue between the run harness and the step layers: one StepFunction per pipeline step, each
// driving capture / sae / transfer / report through their public APIs from the experiment config.
#pragma once
#include "harness/steps.hpp"

namespace strata::pipeline {

// Registers every step this build implements into `registry` (harness::global_steps() for the CLI).
// Steps not registered are reported by `strata run` as "not available yet" and skipped.
void register_steps(harness::StepRegistry& registry);

}  // namespace strata::pipeline
