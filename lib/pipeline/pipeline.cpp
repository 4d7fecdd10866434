#include "pipeline/pipeline.hpp"

namespace strata::pipeline {

void register_steps(harness::StepRegistry& registry) {
  // Steps are added here as their layers land (see docs/harness.md).
  (void)registry;
}

}  // namespace strata::pipeline
