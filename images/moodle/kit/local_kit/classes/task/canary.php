<?php
namespace local_kit\task;

defined('MOODLE_INTERNAL') || die();

/**
 * The queue canary: records that it started and that it finished (config_plugins of
 * local_kit, keys canary_<token>_started and canary_<token>_done, counted), and holds
 * its worker for `hold` seconds in between. Its records are its side effect: a canary
 * that ran twice says so.
 */
class canary extends \core\task\adhoc_task {
    public function execute() {
        $data = $this->get_custom_data();
        $token = preg_replace('/[^a-z0-9]/', '', (string) ($data->token ?? 'x'));
        $this->count("canary_{$token}_started");
        $hold = max(0, min(3600, (int) ($data->hold ?? 0)));
        for ($i = 0; $i < $hold; $i++) {
            sleep(1);
        }
        $this->count("canary_{$token}_done");
    }

    private function count(string $name): void {
        set_config($name, ((int) get_config('local_kit', $name)) + 1, 'local_kit');
    }
}
