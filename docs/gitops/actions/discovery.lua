-- Which dedup2d rollout actions Argo CD offers, greyed out where the operator would ignore them.
-- Requests are acted on at most once per value; the actions send a fresh nonce each time.
local actions = {}
local status = obj.status
local phase = nil
local level = nil
local held = false
if status ~= nil then
  phase = status.phase
  held = status.hold ~= nil
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
actions["abort"] = {["disabled"] = phase == nil or rollingBack}
actions["abort-full"] = {["disabled"] = phase == nil or (rollingBack and level == "Full")}
actions["retry"] = {["disabled"] = not (held or phase == "RolledBack" or phase == "Failed")}
return actions
