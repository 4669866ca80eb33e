-- Which dedup2d rollout actions Argo CD offers, greyed out where the operator would ignore them.
-- Requests are acted on at most once per value; the actions send a fresh nonce each time.
local actions = {}
local status = obj.status
local phase = nil
local level = nil
local held = false
local written = false
if status ~= nil then
  phase = status.phase
  held = status.hold ~= nil
  written = status.fields ~= nil and #status.fields > 0
  if status.rollback ~= nil then
    level = status.rollback.level
  end
end
local paused = obj.spec.paused == true
local finished = phase == "Completed" or phase == "RolledBack" or phase == "Failed"
local rollingBack = phase == "RollingBack" or phase == "RolledBack"

actions["pause"] = {["disabled"] = paused or finished}
actions["resume"] = {["disabled"] = not paused}
actions["promote"] = {["disabled"] = not (phase == "Soaking" or phase == "AwaitingFinalize")}
-- Before any field was written there is nothing to roll back.
actions["abort"] = {["disabled"] = not written or rollingBack}
actions["abort-full"] = {["disabled"] = not written or (rollingBack and level == "Full")}
actions["retry"] = {["disabled"] = not (held or phase == "RolledBack" or phase == "Failed")}
return actions
