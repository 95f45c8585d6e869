<?php
// Adds the kit's exam to a course (idempotent): a quiz "Kit exam" with ten true/false
// questions, open now, one attempt per student, for the exam-start load journey.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';
require_once($CFG->libdir . '/testing/generator/lib.php');
require_once($CFG->dirroot . '/mod/quiz/locallib.php');

$courseid = (int)($argv[1] ?? 0);
$course = $DB->get_record('course', ['id' => $courseid], '*', MUST_EXIST);
\core\session\manager::set_user(get_admin());
foreach (get_fast_modinfo($course)->get_instances_of('quiz') as $cm) {
    if ($cm->name === 'Kit exam') {
        echo "kit: ok: exam exists (cmid {$cm->id})\n";
        exit(0);
    }
}
$generator = new testing_data_generator();
$quiz = $generator->get_plugin_generator('mod_quiz')->create_instance([
    'course' => $course->id, 'name' => 'Kit exam', 'questionsperpage' => 0, 'grade' => 10,
    'sumgrades' => 10, 'attempts' => 0, 'preferredbehaviour' => 'deferredfeedback',
]);
$qgen = $generator->get_plugin_generator('core_question');
$context = context_course::instance($course->id);
$category = $qgen->create_question_category(['contextid' => $context->id, 'name' => 'Kit exam questions']);
for ($i = 1; $i <= 10; $i++) {
    $question = $qgen->create_question('truefalse', null, ['category' => $category->id, 'name' => "Kit question $i"]);
    quiz_add_quiz_question($question->id, $quiz, 0);
}
echo "kit: changed: exam created (cmid {$quiz->cmid})\n";
