-- Let a paused rollout go on (spec.paused: false).
obj.spec.paused = false
return obj
