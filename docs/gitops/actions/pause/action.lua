-- Hold the rollout at its current step (spec.paused); paused time is not counted against deadlines.
obj.spec.paused = true
return obj
